"""facebookresearch/gtn's device names mapped onto torch devices."""
import enum

import torch


class DeviceType(enum.IntEnum):
    CPU = 0
    CUDA = 1


CPU = DeviceType.CPU
CUDA = DeviceType.CUDA


class Device:
    """``Device(gtn.CPU)`` or ``Device(gtn.CUDA, index=0)``: where a graph's weights live (a torch device)."""

    def __init__(self, device_type=CPU, index: int = 0):
        try:
            self.device_type = DeviceType(device_type)
        except ValueError:
            raise ValueError(f"Device: unknown device type {device_type!r} (gtn.CPU or gtn.CUDA)") from None
        self.index = int(index)

    @classmethod
    def _from_torch(cls, dev: torch.device) -> "Device":
        if dev.type == "cuda":
            return cls(CUDA, dev.index if dev.index is not None else torch.cuda.current_device())
        return cls(CPU, 0)

    def is_cuda(self) -> bool:
        return self.device_type == CUDA

    def torch(self) -> torch.device:
        return torch.device("cuda", self.index) if self.is_cuda() else torch.device("cpu")

    def __eq__(self, other):
        return (isinstance(other, Device) and self.device_type == other.device_type
                and (self.device_type == CPU or self.index == other.index))

    def __hash__(self):
        return hash((int(self.device_type), self.index if self.is_cuda() else 0))

    def __repr__(self):
        return f"Device({self.device_type.name}, {self.index})" if self.is_cuda() else "Device(CPU)"


def as_torch_device(device) -> torch.device:
    """A `Device`, a torch.device or a string, as a torch.device (checked to be usable)."""
    if isinstance(device, Device):
        dev = device.torch()
    elif isinstance(device, DeviceType):
        dev = Device(device).torch()
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{dev}: CUDA is not available here (gtn.cuda.is_available() is False)")
    return dev
