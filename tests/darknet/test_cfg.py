"""Cfg text <-> sections: parsing, defaults, the writer and the errors a user sees."""

from __future__ import annotations

import pytest

from yolo_prune.darknet import Darknet, format_cfg, load_cfg, parse_cfg
from yolo_prune.errors import CfgError

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"
FAMILY = ["yolov4.cfg", "yolov4-tiny.cfg", "yolov3.cfg", "yolov3-tiny.cfg", "yolov3-spp.cfg",
          "yolo-fastest-1.1-xl.cfg"]  # fmt: skip


def test_defaults_and_whitespace():
    secs = parse_cfg(
        NET + "[conv]\nfilters = 8\n layers=x\nsize=3 # a comment\n[maxpool]\nstride=2\n"
    )
    conv, pool = secs[1], secs[2]
    assert conv.kind == "convolutional" and conv.name == "conv"
    assert conv["filters"] == 8 and conv["size"] == 3
    assert conv["stride"] == 1 and conv["pad"] == 0 and conv["activation"] == "logistic"
    assert conv["batch_normalize"] == 0 and conv["groups"] == 1
    assert pool.get("size", pool["stride"]) == 2  # Darknet: maxpool size defaults to stride


@pytest.mark.parametrize("name", FAMILY)
def test_writer_round_trips_every_value(name, repo_cfg):
    original = load_cfg(repo_cfg / name)
    again = parse_cfg(format_cfg(original))
    assert [s.kind for s in again] == [s.kind for s in original]
    for a, b in zip(original, again, strict=True):
        assert list(a.options) == list(b.options)
        for key in a.options:
            assert b.options[key].raw == a.options[key].raw


def test_written_cfg_builds_the_same_network(repo_cfg, tmp_path):
    secs = load_cfg(repo_cfg / "yolov4-tiny.cfg")
    secs[1].set("filters", 24)  # sections[0] is [net], so this is layer 0
    out = tmp_path / "small.cfg"
    out.write_text(format_cfg(secs))
    model = Darknet.from_cfg(out)
    assert model.layers[0].conv.out_channels == 24
    assert model.layers[1].conv.in_channels == 24


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"no sections found"),
        (
            "[convolutional]\nfilters=8\n",
            r":1: the first section is \[convolutional\], expected \[net\]",
        ),
        ("filters=8\n", r":1: option 'filters=8' before the first section"),
        (NET + "[convolution]\n", r":5: unknown section \[convolution\]; supported:"),
        (
            NET + "[convolutional]\nfilters=eight\n",
            r":6: \[convolutional\] filters=eight: expected an integer",
        ),
        (
            NET + "[convolutional]\nactivation=leakyy\n",
            r":6: .*activation=leakyy: expected one of linear, leaky",
        ),
        (NET + "[yolo]\nscale_x_y=1.2.3\n", r":6: \[yolo\] scale_x_y=1.2.3: expected a number"),
        (NET + "[yolo]\nmask=0,,1\n", r":6: \[yolo\] mask=0,,1: expected a comma-separated list"),
        (NET + "[convolutional]\nfilters\n", r":6: expected key=value, found 'filters'"),
        (NET + "[convolutional\n", r":5: section header '\[convolutional' has no closing"),
        (NET + "[yolo]\nmax_delta=nan\n", r"expected a finite number"),
        (NET + "[net]\n", r":5: a second \[net\] section"),
    ],
)
def test_parse_errors_name_the_line(text, match):
    with pytest.raises(CfgError, match=match):
        parse_cfg(text, path="bad.cfg")


def test_crlf_is_read_like_lf():
    secs = parse_cfg((NET + "[convolutional]\nfilters=8\n").replace("\n", "\r\n"))
    assert secs[1]["filters"] == 8


def test_load_errors(tmp_path):
    with pytest.raises(CfgError, match=r"missing.cfg: no such cfg file"):
        load_cfg(tmp_path / "missing.cfg")
    binary = tmp_path / "yolov3.weights"
    binary.write_bytes(b"\x00\x00\x00\x00\x02\x00")
    with pytest.raises(CfgError, match=r"binary file, not Darknet cfg text"):
        load_cfg(binary)
    latin = tmp_path / "latin.cfg"
    latin.write_bytes(b"[net]\n# caf\xe9\n")
    with pytest.raises(CfgError, match=r"latin.cfg:2: is not UTF-8 text"):
        load_cfg(latin)
