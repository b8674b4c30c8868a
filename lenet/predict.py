"""``classify``: read isolated digits with a trained LeNet-5, for users who just want the digits."""
from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

from .checkpoint import describe, from_checkpoint, read
from .data import prepare

__all__ = ["classify"]


@torch.no_grad()
def classify(images, model: Union[str, "os.PathLike[str]", torch.nn.Module], batch_size: int = 1000) -> torch.Tensor:
    """Predicted digits ``LongTensor [N]``.

    ``images``: ``[N, 28, 28]`` (or one ``[28, 28]``) in MNIST's layout, uint8 0..255 (numpy or torch), or
    a float tensor already prepared for the network, ``[N, 1, 32, 32]`` (see ``lenet.prepare``).
    ``model``: the path of a checkpoint written by ``python -m lenet.train`` or a loaded model. A string
    reader's checkpoint (or a loaded reader) is refused with an error that names it and `lenet.recognize`; a
    file that is not a checkpoint, with one line (see `lenet.checkpoint.read`).
    """
    if isinstance(model, (str, os.PathLike)):
        ckpt = read(model)
        if ckpt["kind"] != "lenet5":
            raise ValueError(f"{model}: {describe(ckpt['kind'])}; classify reads isolated digits with a 'lenet5' "
                             f"checkpoint (python -m lenet.train)")
        model = from_checkpoint(ckpt, model)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a checkpoint path or a torch.nn.Module, got {type(model).__name__}")
    if _is_reader(model):
        raise TypeError(f"classify got a {type(model).__name__}, a string reader (read strings with "
                        f"lenet.recognize); classify reads isolated digits with a LeNet-5 (a reader's own network is "
                        f"reader.model)")
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if not (x.is_floating_point() and x.dim() == 4 and tuple(x.shape[1:]) == (1, 32, 32)):
        x = prepare(x)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        preds = [model(x[i:i + batch_size].to(param)).argmin(-1) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(preds).cpu().long() if preds else torch.zeros(0, dtype=torch.long)


def _is_reader(model) -> bool:
    from .recognizer import StringReader
    from .sdnn import SDNNReader
    return isinstance(model, (StringReader, SDNNReader))
