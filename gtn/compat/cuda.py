"""``gtn.cuda``: facebookresearch/gtn's CUDA queries, answered by torch."""
import torch


def is_available() -> bool:
    return torch.cuda.is_available()


def device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device() -> int:
    """The current CUDA device index."""
    if not torch.cuda.is_available():
        raise ValueError("gtn.cuda.device: CUDA is not available")
    return torch.cuda.current_device()


def set_device(index: int) -> None:
    if not torch.cuda.is_available():
        raise ValueError("gtn.cuda.set_device: CUDA is not available")
    torch.cuda.set_device(index)


def synchronize(index=None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize(index)
