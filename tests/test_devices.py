"""--device: one check and one resolution for every stage."""

from __future__ import annotations

import pytest
import torch

from fernoise.devices import check_device_name, resolve_device
from fernoise.errors import FernoiseError


def test_names_checked_without_torch_work():
    for ok in ("auto", "cpu", "cuda", "cuda:1"):
        check_device_name(ok)
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(FernoiseError, match="expected auto, cpu, cuda or cuda:N") as e:
            check_device_name(bad)
        assert e.value.one_line().startswith("--device:")


def test_resolution_on_this_machine():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FernoiseError, match="no CUDA device; use --device cpu"):
            resolve_device("cuda:0")
