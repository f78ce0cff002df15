"""Which torch device a stage runs on: ``--device auto|cpu|cuda|cuda:N``, checked in one place."""

from __future__ import annotations

from fernoise.errors import FernoiseError


def check_device_name(device: str, *, flag: str = "--device") -> None:
    """Raise unless ``device`` is auto, cpu, cuda or cuda:N (no torch import: cheap)."""
    ok = device in ("auto", "cpu", "cuda") or (
        device.startswith("cuda:") and device.removeprefix("cuda:").isdigit()
    )
    if not ok:
        raise FernoiseError(f"expected auto, cpu, cuda or cuda:N, got {device!r}", flag=flag)


def resolve_device(device: str = "auto", *, flag: str = "--device") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an explicit CUDA device on a
    machine without one is a one-line error rather than a crash deep inside torch."""
    check_device_name(device, flag=flag)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FernoiseError(
            f"{device} asked for, but this torch sees no CUDA device; use --device cpu", flag=flag
        )
    return device
