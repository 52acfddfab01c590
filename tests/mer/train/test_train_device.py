"""--device is checked before anything is written, with a message that says what to pass instead."""

from __future__ import annotations

import pytest
import torch

from mer.train.device import DeviceError, check_device


def test_cpu_is_fine():
    check_device("cpu")


def test_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="use --device cpu"):
        check_device("cuda")


def test_a_cuda_index_past_the_last_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    with pytest.raises(DeviceError, match=r"2 CUDA device\(s\), cuda:0 to cuda:1"):
        check_device("cuda:2")


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "meta"])
def test_unknown_or_unsupported_devices(bad):
    with pytest.raises(DeviceError, match="cpu"):
        check_device(bad)


def test_mer_train_refuses_before_writing(monkeypatch, tmp_path, capsys):
    from mer.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tmp_path), "--device", "cuda", "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert "mer train: error: --device cuda:" in capsys.readouterr().err
