"""The torch device of a command-line value (``--device auto|cpu|cuda|cuda:N|mps``).

resolve_device("auto")     # this process's GPU under accelerate / torchrun, else the CPU
"""

from __future__ import annotations

import os

import torch


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """A torch device from a command-line value.

    Args:
        spec: ``"auto"`` (or None): this process's GPU when CUDA is available (``cuda:LOCAL_RANK``,
            so each process of ``accelerate launch`` / ``torchrun`` takes its own), else the
            CPU; or any torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Raises:
        ValueError: not a device name, or a GPU that this machine does not have.

    Example:
        >>> resolve_device("auto")          # on a CPU-only machine
        device(type='cpu')
    """
    if spec is None or str(spec) == "auto":
        if torch.cuda.is_available():
            rank = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {spec!r} is not a torch device: use auto, cpu, cuda or cuda:N"
        ) from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {spec!r}: this machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {spec!r}: this machine has {count} GPU(s), cuda:0-{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r}: MPS is not available here; use --device cpu")
    return device
