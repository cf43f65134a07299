"""Darknet .weights io: byte-exact round trips and errors that say by how much a file is off."""

from __future__ import annotations

import struct

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.errors import WeightsError


@pytest.mark.parametrize(
    ("cfg", "weights"),
    [
        ("yolov3-tiny.cfg", "yolov3-tiny.weights"),
        ("yolo-fastest-1.1-xl.cfg", "yolo-fastest-1.1-xl.weights"),
    ],
)
def test_real_weights_round_trip_byte_for_byte(cfg, weights, shared_data, tmp_path):
    src = shared_data / "weights" / weights
    model = Darknet.from_cfg(shared_data / "cfg" / cfg)
    model.load_weights(src)
    out = tmp_path / "again.weights"
    model.save_weights(out)
    assert out.read_bytes() == src.read_bytes()


def test_old_header_with_32_bit_seen_round_trips(tmp_path):
    model = Darknet.from_cfg_text(
        "[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n"
    )
    floats = torch.arange(2 + 6, dtype=torch.float32)
    src = tmp_path / "old.weights"
    src.write_bytes(struct.pack("<3iI", 0, 1, 0, 12345) + floats.numpy().tobytes())
    model.load_weights(src)
    assert model.header == (0, 1, 0, 12345)
    torch.testing.assert_close(model.layers[0].conv.bias.detach(), torch.tensor([0.0, 1.0]))
    out = tmp_path / "out.weights"
    model.save_weights(out)
    assert out.read_bytes() == src.read_bytes()


def test_file_order_bn_then_weights(tmp_path):
    """A BN conv stores shift, scale, mean, variance, then weights; a connected layer stores
    biases, weights, then BN scale, mean, variance."""
    model = Darknet.from_cfg_text(
        "[net]\nwidth=1\nheight=1\nchannels=1\n[convolutional]\nbatch_normalize=1\nfilters=1\nsize=1\n"
        "[connected]\noutput=1\nbatch_normalize=1\n"
    )
    src = tmp_path / "w.weights"
    src.write_bytes(struct.pack("<3iQ", 0, 2, 0, 0) + torch.arange(1.0, 11.0).numpy().tobytes())
    model.load_weights(src)
    conv, fc = model.layers[0], model.layers[1]
    got = [conv.bn.bias, conv.bn.weight, conv.bn.running_mean, conv.bn.running_var, conv.conv.weight,
           fc.fc.bias, fc.fc.weight, fc.bn.weight, fc.bn.running_mean]  # fmt: skip
    assert [float(t.detach().flatten()[0]) for t in got] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert float(fc.bn.running_var[0]) == 10


@pytest.fixture()
def tiny_weights(shared_data, tmp_path):
    return shared_data / "cfg" / "yolov3-tiny.cfg", (
        shared_data / "weights" / "yolov3-tiny.weights"
    ).read_bytes()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:-4], r"1 float too few for the network \(8,858,733 of 8,858,734\)"),
        (
            lambda b: b + b"\0" * 4096,
            r"1,024 floats left after filling the network; the cfg and the weights do not match \(check classes=",
        ),
        (
            lambda b: b[:-1],
            r"35434935 bytes after the header is not a whole number of float32 values",
        ),
        (lambda b: b[:20], r"8,858,734 floats too few for the network \(0 of 8,858,734\)"),
        (lambda b: b"", r"0 bytes is shorter than a Darknet header"),
        (lambda b: b[:10], r"10 bytes is shorter than a Darknet header"),
        (lambda b: struct.pack("<3i", 7000, 2, 0) + b[12:], r"bad header: version 7000.2.0"),
        (lambda b: b"[net]\nwidth=416\nheight=416\n", r"bad header"),
    ],
)
def test_bad_weights_files(mutate, match, tiny_weights, tmp_path):
    cfg, data = tiny_weights
    bad = tmp_path / "bad.weights"
    bad.write_bytes(mutate(data))
    model = Darknet.from_cfg(cfg)
    with pytest.raises(WeightsError, match=r"^bad.weights: " + match):
        model.load_weights(bad)


def test_missing_weights_file(tmp_path):
    model = Darknet.from_cfg_text(
        "[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n"
    )
    with pytest.raises(WeightsError, match=r"nope.weights: no such weights file"):
        model.load_weights(tmp_path / "nope.weights")


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    """A write that fails half way leaves the previous file untouched and no temp file."""
    model = Darknet.from_cfg_text(
        "[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n"
    )
    out = tmp_path / "m.weights"
    model.save_weights(out)
    before = out.read_bytes()
    import yolo_prune.darknet.weights as w

    def boom(_model):
        yield model.layers[0].conv.bias
        raise RuntimeError("disk full")

    monkeypatch.setattr(w, "model_tensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_weights(out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.weights"]
