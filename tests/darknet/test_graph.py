"""Shapes, parameter counts, BFLOPs and the graph errors of impossible networks."""

from __future__ import annotations

import pytest

from yolo_prune.darknet import Darknet, build_graph, load_cfg, parse_cfg
from yolo_prune.errors import CfgError

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"
CONV = "[convolutional]\nfilters={f}\nsize=3\nstride=1\npad=1\nactivation=leaky\n"


@pytest.mark.parametrize(
    ("name", "size", "published"),
    [
        ("yolov4.cfg", 608, 128.459),  # Darknet prints these totals for the canonical cfgs
        ("yolov4-tiny.cfg", 416, 6.910),
        ("yolov3.cfg", 416, 65.879),
        ("yolov3-tiny.cfg", 416, 5.571),
    ],
)
def test_bflops_match_darknet(name, size, published, repo_cfg):
    graph = build_graph(load_cfg(repo_cfg / name), size=size)
    assert graph.bflops == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize("name", ["yolov4.cfg", "yolov3-tiny.cfg", "yolo-fastest-1.1-xl.cfg"])
def test_param_count_equals_torch(name, repo_cfg):
    model = Darknet.from_cfg(repo_cfg / name)
    assert model.graph.params == sum(p.numel() for p in model.parameters())


def test_shapes_follow_darknet_rules():
    text = (
        NET + CONV.format(f=8) + "[maxpool]\nsize=2\nstride=2\n" + "[maxpool]\nsize=2\nstride=1\n"
    )
    text += (
        "[route]\nlayers=-1,-2\n[route]\nlayers=-1\ngroups=2\ngroup_id=1\n[upsample]\nstride=2\n"
    )
    g = build_graph(parse_cfg(text))
    assert [layer.out_shape for layer in g.layers] == [
        (8, 32, 32), (8, 16, 16), (8, 16, 16), (16, 16, 16), (8, 16, 16), (8, 32, 32),
    ]  # fmt: skip
    assert g.layers[3].sources == [2, 1]
    # yolov3-tiny's size=2 stride=1 maxpool keeps 13x13; an odd input rounds up with stride 2
    g = build_graph(parse_cfg(NET.replace("32", "13") + "[maxpool]\nsize=2\nstride=2\n"))
    assert g.layers[0].out_shape == (3, 7, 7)


def test_input_size_override():
    g = build_graph(parse_cfg(NET + CONV.format(f=4)), size=(64, 96))
    assert g.input_shape == (3, 64, 96) and g.layers[0].out_shape == (4, 64, 96)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "[route]\nlayers=-1,5\n",
            r"bad.cfg:12: \[route\] layers=-1,5 refers to layer 5, but this is layer 1; a route can only refer to earlier layers",
        ),
        ("[route]\nlayers=-3\n", r"refers to layer -3, which is before the first layer"),
        ("[shortcut]\nfrom=1\n", r"\[shortcut\] from=1 refers to itself"),
        ("[route]\n", r"\[route\] needs layers="),
        (
            "[maxpool]\nsize=2\nstride=2\n[shortcut]\nfrom=-2\n",
            r"combines layer 0 \(8, 32, 32\) with layer 1 \(8, 16, 16\); both must have the same height and width",
        ),
        (
            "[convolutional]\nfilters=4\nsize=1\n[sam]\nfrom=-2\n",
            r"\[sam\] from=-2 combines layer 0 \(8, 32, 32\) with layer 1 \(4, 32, 32\); both must have the same channels",
        ),
        ("[convolutional]\nfilters=-3\nsize=1\n", r"filters=-3: must be > 0"),
        (
            "[convolutional]\nfilters=6\ngroups=4\nsize=1\n",
            r"groups=4 must divide both the input channels \(8\) and filters \(6\)",
        ),
        (
            "[convolutional]\nfilters=18\nsize=1\n[yolo]\nmask=0,1,5\nanchors=1,2,3,4,5,6\nnum=3\nclasses=1\n",
            r"mask=0,1,5 uses anchor 5, but num=3",
        ),
        (
            "[convolutional]\nfilters=20\nsize=1\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nnum=3\nclasses=1\n",
            r"\[yolo\] gets 20 channels but 3 anchors x \(5 \+ classes=1\) = 18; set filters=18",
        ),
        (
            "[convolutional]\nfilters=18\nsize=1\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4\nnum=3\nclasses=1\n",
            r"num=3 needs 6 anchor values",
        ),
        (
            "[convolutional]\nfilters=4\nsize=5\n" * 8,
            r"would output shape \(4, 0, 0\) from input \(4, 4, 4\); the input is too small",
        ),
        (
            "[convolutional]\nfilters=4\nsize=1\nantialiasing=1\n",
            r"antialiasing=1 is not supported",
        ),
    ],
)
def test_graph_errors_name_layer_and_fix(body, match, tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(NET + CONV.format(f=8) + body)
    with pytest.raises(CfgError, match=match):
        build_graph(load_cfg(cfg))


def test_prune_ignore_names_heads_and_classifier_output(repo_cfg):
    det = Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg")
    ignored = det.prune_ignore()
    assert ignored == ["layers.15.conv.weight", "layers.15.conv.bias",
                       "layers.22.conv.weight", "layers.22.conv.bias"]  # fmt: skip
    cls = Darknet.from_cfg_text(
        NET + CONV.format(f=4) + "[connected]\noutput=10\nactivation=linear\n[softmax]\n"
    )
    assert cls.prune_ignore() == ["layers.1.fc.weight", "layers.1.fc.bias"]
