"""The --device a run asks for, checked before anything is written (a traceback from deep inside the
first ``.to(device)`` told a user nothing about what to change)."""

from __future__ import annotations


class DeviceError(ValueError):
    """The requested device cannot be used here (the message says why and what to pass instead)."""


def check_device(device: str) -> None:
    """Raise DeviceError unless ``device`` ('cpu', 'cuda', 'cuda:N') can run here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"--device {device!r} is not a device PyTorch knows ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise DeviceError(f"--device {device}: mer trains on cpu or cuda[:N], not {dev.type}")
    if not torch.cuda.is_available():
        why = (
            f"this PyTorch ({torch.__version__}) is a CPU-only build"
            if torch.version.cuda is None
            else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)"
        )
        raise DeviceError(f"--device {device}: {why}; use --device cpu, or run on a machine with an NVIDIA GPU")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise DeviceError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
