"""INT8 export: ORT static quantization of the real Yolo-Fastest, decode kept float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_prune.cli.main import main
from yolo_prune.errors import ConfigError, DataError
from yolo_prune.export import export_onnx
from yolo_prune.jobs.models import load_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantize = pytest.importorskip("yolo_prune.export.quantize")

SIZE = 320
CALIB_IMAGES = 8  # enough for the property tests; the measured models used 64
METADATA = {"classes": "80", "input_size": "320x320", "names": "person,bicycle"}


def _fastest(shared_data: Path) -> tuple[Path, Path]:
    return (
        shared_data / "cfg" / "yolo-fastest-1.1-xl.cfg",
        shared_data / "weights" / "yolo-fastest-1.1-xl.weights",
    )


@pytest.fixture(scope="module")
def fastest(shared_data, tmp_path_factory) -> dict:
    """Float and INT8 ONNX of Yolo-Fastest-1.1-xl at 320, the float one with metadata."""
    root = tmp_path_factory.mktemp("int8")
    model, _ = load_model(*_fastest(shared_data), size=SIZE)
    float_path, int8_path = root / "float.onnx", root / "int8.onnx"
    export_onnx(model, float_path, input_shape=model.input_shape)
    proto = onnx.load(str(float_path))
    for key, value in METADATA.items():  # what the export's own metadata will look like
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(float_path))
    batches = quantize.calibration_batches(model, shared_data / "coco128", images=CALIB_IMAGES)
    # Every conv but the heads int8 (the default keeps the linear bottlenecks float too, which
    # the tests of keep_float cover), calibrated as by default.
    summary = quantize.quantize_onnx_int8(float_path, int8_path, calibration=batches, keep_float=())
    return {"float": float_path, "int8": int8_path, "summary": summary, "batches": batches}


def _producers(proto) -> dict:
    return {out: node for node in proto.graph.node for out in node.output}


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_calibration_batches_are_training_images_in_the_model_geometry(fastest):
    batches = fastest["batches"]
    assert len(batches) == CALIB_IMAGES
    for b in batches:
        assert b.shape == (1, 3, SIZE, SIZE) and b.dtype == np.float32
        assert b.flags.c_contiguous and b.min() >= 0.0 and b.max() <= 1.0


def test_every_convolution_but_the_heads_runs_on_int8_weights_and_inputs(fastest):
    proto = onnx.load(str(fastest["int8"]))
    producers = _producers(proto)
    heads = set(fastest["summary"]["head_convs"])
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(heads) == 2 and fastest["summary"]["quantized_convs"] == len(convs) - 2
    inits = {i.name for i in proto.graph.initializer}
    for conv in convs:
        data, weight = producers[conv.input[0]], producers.get(conv.input[1])
        assert data.op_type == "DequantizeLinear", conv.name  # every conv reads int8 data
        if conv.name in heads:
            assert conv.input[1] in inits, conv.name  # float weights, no DequantizeLinear
        else:
            assert weight.op_type == "DequantizeLinear", conv.name
    kinds = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    _session(fastest["int8"])  # ORT accepts it (QDQ fused into QLinearConv at load)


def test_the_decode_stays_float(fastest):
    float_proto, int8_proto = onnx.load(str(fastest["float"])), onnx.load(str(fastest["int8"]))
    heads, decode = quantize.find_head(float_proto)
    assert len(heads) == 2  # Yolo-Fastest has two [yolo] layers
    ops = {n.op_type for n in float_proto.graph.node if n.name in decode}
    assert {"Sigmoid", "Exp", "Concat"} <= ops and "Conv" not in ops
    by_name = {n.name: n for n in int8_proto.graph.node}
    consumers: dict[str, list] = {}
    for node in int8_proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = _producers(int8_proto)
    float_decode = set(fastest["summary"]["float_nodes"])
    for name in float_decode:
        node = by_name[name]
        # Nothing the decode computes is re-quantized, and its math reads float tensors.
        for out in node.output:
            assert all(c.op_type != "QuantizeLinear" for c in consumers.get(out, [])), name
        if node.op_type in ("Sigmoid", "Exp", "Mul", "Add"):
            srcs = [producers[i] for i in node.input if i in producers]
            assert all(s.op_type != "DequantizeLinear" for s in srcs), name
    (output,) = int8_proto.graph.output
    assert producers[output.name].name in float_decode


def test_metadata_is_kept_and_marked(fastest):
    props = {p.key: p.value for p in onnx.load(str(fastest["int8"])).metadata_props}
    assert {k: props[k] for k in METADATA} == METADATA
    assert props["quantization"] == "int8-qdq"


def test_outputs_stay_close_to_the_float_model_on_a_real_image(fastest, shared_data):
    from yolo_prune.data.images import load_image
    from yolo_prune.detect.preprocess import preprocess

    x, _ = preprocess([load_image(shared_data / "images" / "dog.jpg")], SIZE)
    x = x.contiguous().numpy()
    want = _session(fastest["float"]).run(None, {"images": x})[0][0]
    got = _session(fastest["int8"]).run(None, {"images": x})[0][0]
    assert got.shape == want.shape and got.dtype == np.float32
    top = np.argsort(-want[:, 4])[:10]
    assert want[top, 4].min() > 0.9  # the dog, the bicycle and the truck, seen from 10 rows
    # Tolerances from the measured error (heads float; dog, horses, person): the objectness of
    # the float model's 10 surest rows moved by at most 0.16 and their centres by at most
    # 4.2 px (8-bit activations through 80 convs of a depthwise network). Above that margin
    # sits what a broken scale or a missing dequantization does: objectness collapses to 0
    # (yolov3-tiny's inf scales) or to a constant.
    np.testing.assert_allclose(got[top, 4], want[top, 4], atol=0.25, rtol=0)
    np.testing.assert_allclose(got[top, :2], want[top, :2], atol=10.0, rtol=0)
    assert np.abs(got[:, 4] - want[:, 4]).mean() < 0.01  # and the background stays background


def test_int8_heads_quantize_the_head_convolutions_too(fastest, tmp_path):
    out = tmp_path / "heads.onnx"
    summary = quantize.quantize_onnx_int8(
        fastest["float"],
        out,
        calibration=fastest["batches"][:2],
        keep_float_heads=False,
        keep_float=(),
        preprocess=False,
    )
    proto = onnx.load(str(out))
    producers = _producers(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert summary["quantized_convs"] == len(convs)
    for conv in convs:
        assert producers[conv.input[1]].op_type == "DequantizeLinear", conv.name
    assert not set(summary["head_convs"]) & set(summary["float_nodes"])


def test_export_cli_writes_int8(shared_data, tmp_path, capsys):
    cfg, weights = _fastest(shared_data)
    out = tmp_path / "fastest-int8.onnx"
    args = ["export", "--cfg", str(cfg), "--weights", str(weights), "--size", str(SIZE),
            "--int8", "--calib", str(shared_data / "coco128"), "--calib-images", "2",
            "--calib-split", "train2017", "--int8-heads", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "INT8 QDQ" in printed and "7-bit weights, int8 heads" in printed
    assert "linear nodes float, percentile 99.95 calibration" in printed  # the defaults
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    proto = onnx.load(str(out))
    assert {p.key: p.value for p in proto.metadata_props}["quantization"] == "int8-qdq"
    x = np.zeros((2, 3, SIZE, SIZE), dtype=np.float32)
    (y,) = _session(out).run(None, {"images": x})
    assert y.shape == (2, 3 * (20 * 20 + 10 * 10), 85)  # the dynamic batch survives


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "--int8 needs calibration images: add --calib DATA"),
        (["--int8", "--calib", "DATA", "--format", "darknet"], "--int8 writes ONNX"),
        (["--calib", "DATA"], "only apply with --int8"),
        (["--int8", "--calib", "DATA", "--calib-images", "0"], "--calib-images 0"),
        (["--int8", "--calib", "DATA", "--calib-method", "kl"], "unknown calibration method"),
        (["--int8", "--calib", "DATA", "--int8-keep-float", "linear,dw"], "unknown kind"),
        (
            ["--int8", "--calib", "DATA", "--calib-method", "minmax", "--calib-percentile", "99"],
            "--calib-percentile applies to --calib-method percentile, not minmax",
        ),
        (["--int8", "--calib", "DATA", "--calib-percentile", "0"], "calibration percentile 0.0"),
        (["--int8-keep-float", "none"], "--int8-keep-float only apply with --int8"),
        (["--int8-full-range"], "--int8-full-range only apply with --int8"),
    ],
)
def test_export_cli_refuses_bad_int8_options(shared_data, tmp_path, capsys, extra, message):
    cfg, weights = _fastest(shared_data)
    extra = [str(shared_data / "coco128") if a == "DATA" else a for a in extra]
    args = ["export", "--cfg", str(cfg), "--weights", str(weights),
            "--out", str(tmp_path / "m.onnx"), *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("yolo-prune export: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "m.onnx").exists()


def test_no_calibration_images_is_a_config_error(fastest, tmp_path):
    with pytest.raises(ConfigError, match=r"^no calibration images; give training images"):
        quantize.quantize_onnx_int8(fastest["float"], tmp_path / "q.onnx", calibration=[])
    with pytest.raises(ConfigError, match=r"expected a positive number"):
        quantize.calibration_batches(None, tmp_path, images=0)


def test_calibration_of_the_wrong_size_is_a_data_error(fastest, tmp_path):
    wrong = [np.zeros((1, 3, 416, 416), dtype=np.float32)]
    with pytest.raises(
        DataError,
        match=r"float\.onnx: calibration batch 0 is float32 \[1, 3, 416, 416\]; the model takes float32 \[Bx3x320x320\]",
    ):  # noqa: E501
        quantize.quantize_onnx_int8(fastest["float"], tmp_path / "q.onnx", calibration=wrong)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"this is not a model\n" * 10,
            r"^weights\.onnx: not an ONNX model \(.*\); export one with",
        ),  # noqa: E501
        (b"", r"^weights\.onnx: not an ONNX model \(no graph\)"),
    ],
)
def test_a_file_that_is_not_onnx_is_a_data_error(fastest, tmp_path, content, message):
    src = tmp_path / "weights.onnx"
    src.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        quantize.quantize_onnx_int8(src, tmp_path / "q.onnx", calibration=fastest["batches"])
    assert "\n" not in str(info.value)
    assert not (tmp_path / "q.onnx").exists()


def test_edge_padding_gives_the_max_pool_the_same_maxima_as_minus_infinity(tmp_path):
    from onnx import TensorProto, helper

    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 0, 0, 0, 0, 1, 1])
    value = helper.make_tensor("value", TensorProto.FLOAT, [], [float("-inf")])
    graph = helper.make_graph(
        [
            helper.make_node("Pad", ["x", "pads", "value"], ["p"], name="pad", mode="constant"),
            helper.make_node("MaxPool", ["p"], ["y"], name="pool", kernel_shape=[2, 2]),
        ],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 7])],
        initializer=[pads, value],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = -np.abs(np.random.default_rng(0).normal(size=(1, 2, 5, 7))).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert quantize.edge_pad_max_pools_(model) == 1
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)  # negative inputs: a 0 pad would show


def _tiny_yolov3_int8(repo_cfg, randomize, root, *, seed: int, **options):
    """yolov3-tiny at 96 with random weights, exported and quantized with ``options`` on two
    random calibration images: ``(int8 path, summary, the calibration batches)``."""
    from yolo_prune.darknet import Darknet

    model = randomize(Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=96))
    float_path, int8_path = root / "float.onnx", root / "int8.onnx"
    export_onnx(model, float_path, input_shape=model.input_shape)
    rng = np.random.default_rng(seed)
    batches = [rng.random((1, 3, 96, 96), dtype=np.float32) for _ in range(2)]
    summary = quantize.quantize_onnx_int8(float_path, int8_path, calibration=batches, **options)
    return int8_path, summary, batches


def test_a_minus_infinity_max_pool_pad_quantizes_to_finite_scales(repo_cfg, randomize, tmp_path):
    from onnx import numpy_helper

    int8_path, summary, batches = _tiny_yolov3_int8(
        repo_cfg, randomize, tmp_path, seed=1, keep_float_heads=False
    )
    proto = onnx.load(str(int8_path))
    assert summary["quantized_convs"] == sum(n.op_type == "Conv" for n in proto.graph.node)
    for init in proto.graph.initializer:
        assert np.isfinite(numpy_helper.to_array(init).astype(np.float64)).all(), init.name
    y = _session(int8_path).run(None, {"images": batches[0]})[0]
    assert np.isfinite(y).all() and y[..., 4].max() > 0


def _activations_of(proto, conv) -> list:
    return [n for n in proto.graph.node if conv.output[0] in n.input and n.op_type == "LeakyRelu"]


def test_kinds_are_found_by_graph_inspection(fastest):
    proto = onnx.load(str(fastest["float"]))
    quantize._name_nodes_(proto)
    heads, _ = quantize.find_head(proto)
    by_name = {n.name: n for n in proto.graph.node}
    inits = {i.name: i for i in proto.graph.initializer}
    depthwise = quantize.find_float_nodes(proto, ["depthwise"], skip=heads)
    dw_convs = [by_name[n] for n in depthwise if by_name[n].op_type == "Conv"]
    # Yolo-Fastest-1.1-xl: 28 depthwise 3x3 and 5x5 convs, each followed by its own leaky ReLU.
    assert len(dw_convs) == 28 and len(depthwise) == 56
    for conv in dw_convs:
        out_channels, in_per_group = list(inits[conv.input[1]].dims)[:2]
        group = next(a.i for a in conv.attribute if a.name == "group")
        assert in_per_group == 1 and group == out_channels, conv.name
    linear = [by_name[n] for n in quantize.find_float_nodes(proto, ["linear"], skip=heads)]
    assert len(linear) == 28 and {n.op_type for n in linear} == {"Conv"}
    for conv in linear:  # the 1x1 bottlenecks: no activation, not a head
        assert list(inits[conv.input[1]].dims)[2:] == [1, 1] and not _activations_of(proto, conv)
        assert conv.name not in heads
    unskipped = quantize.find_float_nodes(proto, ("linear",))
    assert set(unskipped) == {n.name for n in linear} | set(heads)  # the heads are linear too


def test_the_stem_is_the_conv_reading_the_image_with_its_activation(fastest):
    proto = onnx.load(str(fastest["float"]))
    quantize._name_nodes_(proto)
    by_name = {n.name: n for n in proto.graph.node}
    stem = [by_name[n] for n in quantize.find_float_nodes(proto, ["stem"])]
    # Yolo-Fastest: one conv reads the image; its leaky ReLU feeds a conv, not a pool.
    assert [n.op_type for n in stem] == ["Conv", "LeakyRelu"]
    assert stem[0].input[0] == "images" and stem[1].input[0] == stem[0].output[0]


@pytest.fixture(scope="module")
def tiny_stem(repo_cfg, randomize, tmp_path_factory) -> dict:
    """yolov3-tiny at 96 (random weights), INT8 with its stem float: conv, leaky ReLU, pool."""
    int8_path, summary, batches = _tiny_yolov3_int8(
        repo_cfg, randomize, tmp_path_factory.mktemp("stem"), seed=3, keep_float=("linear", "stem")
    )
    return {"int8": int8_path, "summary": summary, "x": batches[0]}


def test_a_float_stem_takes_the_max_pool_it_feeds_alone(tiny_stem):
    proto = onnx.load(str(tiny_stem["int8"]))
    kept = set(tiny_stem["summary"]["float_nodes"])
    compute = [
        n for n in proto.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
    ]
    assert [(n.op_type, n.name in kept) for n in compute[:4]] == [
        ("Conv", True),
        ("LeakyRelu", True),
        ("MaxPool", True),
        ("Conv", False),
    ]
    assert compute[0].input[0] == "images"  # no QuantizeLinear before the stem
    assert tiny_stem["summary"]["quantized_convs"] == 13 - 2 - 1  # heads and stem float


def _first_pool_input(path: Path, disabled: list[str], tmp_path: Path) -> str:
    """The op that feeds the first max pool of the graph ORT actually runs."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )
    proto = onnx.load(options.optimized_model_filepath)
    producers = _producers(proto)
    pool = next(n for n in proto.graph.node if "MaxPool" in n.op_type)
    return producers[pool.input[0]].op_type


def test_our_runtime_keeps_the_pool_after_a_float_stem_float(tiny_stem, tmp_path):
    from yolo_prune.runtime.onnxrt import DISABLED_OPTIMIZERS, load_onnx_model

    # ORT by itself moves the pool's QuantizeLinear above it (a uint8 pool in NCHW, slow);
    # the sessions our runtime opens do not.
    assert _first_pool_input(tiny_stem["int8"], [], tmp_path) == "QuantizeLinear"
    assert _first_pool_input(tiny_stem["int8"], DISABLED_OPTIMIZERS, tmp_path) != "QuantizeLinear"
    model = load_onnx_model(tiny_stem["int8"], threads=1)
    plain = _session(tiny_stem["int8"]).run(None, {"images": tiny_stem["x"]})[0]
    ours = model(torch.from_numpy(tiny_stem["x"])).numpy()
    np.testing.assert_allclose(ours, plain, rtol=0, atol=1e-4)  # a pool commutes with rounding


@pytest.fixture(scope="module")
def kept_float(fastest, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kept") / "kept.onnx"
    summary = quantize.quantize_onnx_int8(
        fastest["float"],
        out,
        calibration=fastest["batches"][:4],
        keep_float=("depthwise", "linear"),
        method="minmax",
    )
    return {"path": out, "summary": summary}


def test_kept_kinds_are_float_in_the_quantized_graph(kept_float):
    proto = onnx.load(str(kept_float["path"]))
    producers = _producers(proto)
    inits = {i.name: i for i in proto.graph.initializer}
    by_name = {n.name: n for n in proto.graph.node}
    kept = set(kept_float["summary"]["float_nodes"])
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    float_convs = [c for c in convs if c.name in kept]
    assert len(float_convs) == 28 + 28 + 2  # depthwise, linear, heads
    assert kept_float["summary"]["quantized_convs"] == len(convs) - len(float_convs)
    assert kept_float["summary"]["keep_float"] == ("depthwise", "linear")
    for conv in float_convs:
        assert conv.input[1] in inits, conv.name  # float weights, no DequantizeLinear
        assert inits[conv.input[1]].data_type == onnx.TensorProto.FLOAT, conv.name
    for conv in convs:
        if conv.name not in kept:
            assert producers[conv.input[1]].op_type == "DequantizeLinear", conv.name
    # A kept depthwise conv feeds its leaky ReLU directly in float, so ORT fuses the two.
    dw = [c for c in float_convs if list(inits[c.input[1]].dims)[1] == 1]
    assert len(dw) == 28
    for conv in dw:
        (act,) = _activations_of(proto, conv)
        assert act.name in kept and by_name[act.name].input[0] == conv.output[0]


def test_kept_kinds_outputs_stay_close_to_the_float_model(kept_float, fastest, shared_data):
    from yolo_prune.data.images import load_image
    from yolo_prune.detect.preprocess import preprocess

    x, _ = preprocess([load_image(shared_data / "images" / "dog.jpg")], SIZE)
    x = x.contiguous().numpy()
    want = _session(fastest["float"]).run(None, {"images": x})[0][0]
    got = _session(kept_float["path"]).run(None, {"images": x})[0][0]
    top = np.argsort(-want[:, 4])[:10]
    # The same margins as the all-int8 model's (fewer tensors are quantized here).
    np.testing.assert_allclose(got[top, 4], want[top, 4], atol=0.25, rtol=0)
    np.testing.assert_allclose(got[top, :2], want[top, :2], atol=10.0, rtol=0)
    assert np.abs(got[:, 4] - want[:, 4]).mean() < 0.01


def test_an_unknown_kind_to_keep_float_is_a_config_error(fastest, tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown kind of node to keep float 'dw'; choose"):
        quantize.quantize_onnx_int8(
            fastest["float"], tmp_path / "q.onnx", calibration=fastest["batches"], keep_float=["dw"]
        )
    assert not (tmp_path / "q.onnx").exists()


def test_percentile_options_that_conflict_are_config_errors(fastest, tmp_path):
    def quantize_with(**options):
        quantize.quantize_onnx_int8(
            fastest["float"], tmp_path / "q.onnx", calibration=fastest["batches"], **options
        )

    with pytest.raises(ConfigError, match=r"only applies to percentile calibration, not 'minmax'"):
        quantize_with(method="minmax", percentile=99.9)
    with pytest.raises(ConfigError, match=r"^calibration percentile 100\.5; expected a share"):
        quantize_with(percentile=100.5)
    assert not (tmp_path / "q.onnx").exists()


def test_the_default_calibration_is_the_measured_best_percentile(fastest):
    summary = fastest["summary"]
    assert summary["method"] == "percentile" and summary["percentile"] == 99.95
    props = {p.key: p.value for p in onnx.load(str(fastest["int8"])).metadata_props}
    assert props["quantization_calibration"].startswith("percentile 99.95, 8 batches")
    assert "keep_float=none" in props["quantization_calibration"]


def test_histogram_calibration_keeps_what_fits_in_its_memory_budget(
    repo_cfg, randomize, tmp_path, monkeypatch
):
    """Percentile calibration holds every tensor of every image; past the budget it calibrates
    on an evenly spaced part of the images instead of running out of memory."""
    from yolo_prune.darknet import Darknet

    model = randomize(Darknet.from_cfg(repo_cfg / "yolov3-tiny.cfg", size=96))
    float_path = tmp_path / "float.onnx"
    export_onnx(model, float_path, input_shape=model.input_shape)
    per_image = quantize.activation_bytes(onnx.load(str(float_path)))
    assert 1e6 < per_image < 1e7  # yolov3-tiny at 96: a few MB of float tensors
    monkeypatch.setattr(quantize, "HISTOGRAM_MEMORY_BYTES", 3 * per_image)
    rng = np.random.default_rng(2)
    batches = [rng.random((1, 3, 96, 96), dtype=np.float32) for _ in range(8)]
    summary = quantize.quantize_onnx_int8(float_path, tmp_path / "p.onnx", calibration=batches)
    # the budget is checked on the prepared graph, a little larger than the exported one
    assert summary["method"] == "percentile" and 1 <= summary["calibration_images"] <= 3
    minmax = quantize.quantize_onnx_int8(
        float_path, tmp_path / "m.onnx", calibration=batches, method="minmax"
    )
    assert minmax["calibration_images"] == 8  # MinMax reduces as it goes: no cap


def _int8_weight_extremes(path: Path) -> list[int]:
    """The largest |int8| of each quantized conv weight (the per-channel maximum's level)."""
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = _producers(proto)
    out = []
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        dq = producers.get(conv.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            out.append(int(np.abs(inits[dq.input[0]].astype(np.int32)).max()))
    return out


def test_weights_are_7_bit_by_default_and_8_bit_on_request(fastest, tmp_path):
    # 8-bit weights saturate ONNX Runtime's u8 x s8 pair sums on x86 cores without VNNI
    # (yolov3-tiny lost 2.9 AP50 on an AVX2 EPYC); 7-bit weights cannot.
    seven = tmp_path / "seven.onnx"
    quantize.quantize_onnx_int8(fastest["float"], seven, calibration=fastest["batches"][:2])
    for path in (seven, fastest["int8"]):  # the fixture's file was written by default too
        levels = _int8_weight_extremes(path)
        assert levels and max(levels) <= 64
    eight = tmp_path / "eight.onnx"
    quantize.quantize_onnx_int8(
        fastest["float"], eight, calibration=fastest["batches"][:2], reduce_range=False
    )
    assert max(_int8_weight_extremes(eight)) == 127
