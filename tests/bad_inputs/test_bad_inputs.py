"""The bad-input corpus: every malformed file gives its one-line error, never a traceback.

``cases.yaml`` lists each case: which reader takes it (``kind``), the file (committed under this
folder, or written into ``tmp_path`` by one of the ``make_*`` functions below when it is big,
binary or depends on the tiny network's weights), the error class from
:mod:`yolo_prune.errors` (or ``ok`` for odd inputs that must be accepted) and a substring that
the message must contain. Every case runs through the library, and every case that a
subcommand reads runs through the CLI in-process (``main([...])``: exit status 2, exactly one
line on stderr); a few run as real subprocesses, where OpenCV's own warnings would also show.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from yolo_prune import errors
from yolo_prune.cli.main import main
from yolo_prune.darknet import Darknet
from yolo_prune.data.coco import load_detection_dataset
from yolo_prune.data.images import load_image
from yolo_prune.data.train_dataset import TrainDataset
from yolo_prune.data.yolo_txt import parse_label_file
from yolo_prune.detect.detector import Detector
from yolo_prune.engine.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.engine.hooks import TrainState
from yolo_prune.jobs.recipe import read_recipe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TINY = HERE / "tiny.cfg"
CASES = yaml.safe_load((HERE / "cases.yaml").read_text(encoding="utf-8"))
KINDS = ("cfg", "weights", "image", "label", "checkpoint", "recipe", "onnx")
NUM_CLASSES = 80  # the label reader's class count: what `eval` uses for YOLO txt (COCO ids)


@dataclass(frozen=True)
class Good:
    """Valid files the generated cases are cut from."""

    weights: bytes  # tiny.cfg's .weights (header 0.2.5, 8-byte seen)
    checkpoint: bytes  # a yolo_prune checkpoint of tiny.cfg


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Good:
    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = Darknet.from_cfg(TINY)
    model.save_weights(root / "tiny.weights")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(root / "last.pt", TrainState(model=model, optimizer=opt), epoch_done=True)
    return Good((root / "tiny.weights").read_bytes(), (root / "last.pt").read_bytes())


@pytest.fixture(scope="module")
def detector(good, tmp_path_factory) -> Detector:
    path = tmp_path_factory.mktemp("det") / "tiny.weights"
    path.write_bytes(good.weights)
    return Detector.from_files(TINY, path, conf=0.01)


# --- generated cases --------------------------------------------------------------------------

MAKERS: dict[str, Callable[[Path, Good], Path]] = {}


def maker(fn: Callable[[Path, Good], Path]) -> Callable[[Path, Good], Path]:
    MAKERS[fn.__name__.removeprefix("make_")] = fn
    return fn


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cfg_text() -> str:
    return TINY.read_text(encoding="utf-8")


@maker
def make_crlf(tmp: Path, good: Good) -> Path:
    return _write(tmp / "crlf.cfg", _cfg_text().replace("\n", "\r\n").encode())


@maker
def make_crlf_error(tmp: Path, good: Good) -> Path:
    text = _cfg_text().replace("filters=16", "filters=sixteen", 1)  # line 22 of tiny.cfg
    return _write(tmp / "crlf_error.cfg", text.replace("\n", "\r\n").encode())


@maker
def make_utf8_bom(tmp: Path, good: Good) -> Path:
    return _write(tmp / "bom.cfg", b"\xef\xbb\xbf" + _cfg_text().encode())


@maker
def make_latin1(tmp: Path, good: Good) -> Path:
    text = _cfg_text().replace("activation=leaky", "activation=leaky # r\u00e9seau", 1)
    return _write(tmp / "latin1.cfg", text.encode("latin-1"))


@maker
def make_junk_binary_1mb(tmp: Path, good: Good) -> Path:
    return _write(tmp / "junk.cfg", np.random.default_rng(8).bytes(1 << 20))


@maker
def make_junk_text_1mb(tmp: Path, good: Good) -> Path:
    # One 1 MiB line: no newline, space or '#' to cut it short in the message.
    chars = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789[],.-_", dtype=np.uint8)
    junk = np.random.default_rng(8).choice(chars, size=1 << 20)
    return _write(tmp / "junk_text.cfg", b"x" + junk.tobytes())


@maker
def make_weights_given_as_cfg(tmp: Path, good: Good) -> Path:
    return _write(tmp / "tiny.weights.cfg", good.weights)


@maker
def make_cfg_folder(tmp: Path, good: Good) -> Path:
    (tmp / "folder.cfg").mkdir()
    return tmp / "folder.cfg"


@maker
def make_cfg_missing(tmp: Path, good: Good) -> Path:
    return tmp / "missing.cfg"


def _header(major: int, minor: int, seen_bytes: int) -> bytes:
    return struct.pack("<3i", major, minor, 5) + (b"\0" * seen_bytes)


@maker
def make_weights_empty(tmp: Path, good: Good) -> Path:
    return _write(tmp / "empty.weights", b"")


@maker
def make_weights_header_only(tmp: Path, good: Good) -> Path:
    return _write(tmp / "header_only.weights", good.weights[:20])


@maker
def make_weights_short_header(tmp: Path, good: Good) -> Path:
    return _write(tmp / "short_header.weights", good.weights[:18])


@maker
def make_weights_truncated_1_byte(tmp: Path, good: Good) -> Path:
    return _write(tmp / "truncated.weights", good.weights[:-1])


@maker
def make_weights_one_float_too_long(tmp: Path, good: Good) -> Path:
    return _write(tmp / "long.weights", good.weights + struct.pack("<f", 0.5))


@maker
def make_weights_wrong_major(tmp: Path, good: Good) -> Path:
    return _write(tmp / "major.weights", _header(1000, 2, 8) + good.weights[20:])


@maker
def make_weights_negative_minor(tmp: Path, good: Good) -> Path:
    return _write(tmp / "minor.weights", _header(0, -1, 8) + good.weights[20:])


@maker
def make_weights_version_says_4_byte_seen(tmp: Path, good: Good) -> Path:
    return _write(tmp / "v01.weights", _header(0, 1, 8) + good.weights[20:])


@maker
def make_weights_version_says_8_byte_seen(tmp: Path, good: Good) -> Path:
    return _write(tmp / "v02.weights", _header(0, 2, 4) + good.weights[20:])


@maker
def make_weights_pytorch_zip(tmp: Path, good: Good) -> Path:
    torch.save({"layers.0.conv.weight": torch.zeros(8, 3, 3, 3)}, tmp / "model.weights")
    return tmp / "model.weights"


@maker
def make_weights_of_another_cfg(tmp: Path, good: Good) -> Path:
    cfg = tmp / "wider.cfg"
    cfg.write_text(_cfg_text().replace("filters=8", "filters=12"), encoding="utf-8")
    Darknet.from_cfg(cfg).save_weights(tmp / "wider.weights")
    return tmp / "wider.weights"


@maker
def make_weights_missing(tmp: Path, good: Good) -> Path:
    return tmp / "missing.weights"


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _photo(h: int, w: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)


@maker
def make_jpeg_truncated(tmp: Path, good: Good) -> Path:
    data = _encode(".jpg", _photo(96, 128))
    return _write(tmp / "cut.jpg", data[: len(data) * 2 // 3])


@maker
def make_jpeg_missing_last_byte(tmp: Path, good: Good) -> Path:
    return _write(tmp / "cut1.jpg", _encode(".jpg", _photo(96, 128))[:-1])


@maker
def make_png_truncated(tmp: Path, good: Good) -> Path:
    data = _encode(".png", _photo(96, 128))
    return _write(tmp / "cut.png", data[: len(data) // 2])


@maker
def make_png_alpha(tmp: Path, good: Good) -> Path:
    return _write(tmp / "alpha.png", _encode(".png", _photo(40, 50, 4)))


@maker
def make_png_grayscale(tmp: Path, good: Good) -> Path:
    return _write(tmp / "gray.png", _encode(".png", _photo(40, 50, 1)[..., 0]))


@maker
def make_png_1x1(tmp: Path, good: Good) -> Path:
    return _write(tmp / "dot.png", _encode(".png", _photo(1, 1)))


@maker
def make_jpeg_10000x10000(tmp: Path, good: Good) -> Path:
    image = np.zeros((10_000, 10_000, 3), dtype=np.uint8)
    image[2000:8000, 3000:7000] = (40, 160, 220)  # something to look at, cheap to encode
    return _write(tmp / "huge.jpg", _encode(".jpg", image))


@maker
def make_image_missing(tmp: Path, good: Good) -> Path:
    return tmp / "missing.jpg"


class _RunsCode:
    """Unpickling this runs Python code that writes ``<marker>`` (what a malicious file does)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@maker
def make_checkpoint_runs_code(tmp: Path, good: Good) -> Path:
    payload = {"format": "yolo_prune.checkpoint/1", "model": _RunsCode(tmp / "code.ran")}
    torch.save(payload, tmp / "evil.pt")
    return tmp / "evil.pt"


@maker
def make_checkpoint_bare_pickle(tmp: Path, good: Good) -> Path:
    return _write(tmp / "bare.pt", pickle.dumps(_RunsCode(tmp / "bare.ran")))


@maker
def make_checkpoint_empty(tmp: Path, good: Good) -> Path:
    return _write(tmp / "empty.pt", b"")


@maker
def make_checkpoint_text(tmp: Path, good: Good) -> Path:
    return _write(tmp / "text.pt", b"epoch 3, loss 0.25\n")


@maker
def make_checkpoint_truncated(tmp: Path, good: Good) -> Path:
    return _write(tmp / "cut.pt", good.checkpoint[: len(good.checkpoint) // 2])


@maker
def make_checkpoint_state_dict_only(tmp: Path, good: Good) -> Path:
    torch.save(Darknet.from_cfg(TINY).state_dict(), tmp / "state.pt")
    return tmp / "state.pt"


@maker
def make_recipe_missing(tmp: Path, good: Good) -> Path:
    return tmp / "missing.yaml"


@maker
def make_onnx_empty(tmp: Path, good: Good) -> Path:
    return _write(tmp / "empty.onnx", b"")


@maker
def make_onnx_given_weights(tmp: Path, good: Good) -> Path:
    return _write(tmp / "tiny.weights.onnx", good.weights)


@maker
def make_onnx_missing(tmp: Path, good: Good) -> Path:
    return tmp / "missing.onnx"


# --- readers: what the library does with each kind ----------------------------------------------


def _read(kind: str, path: Path, detector: Detector) -> None:
    if kind == "cfg":
        Darknet.from_cfg(path)
    elif kind == "weights":
        Darknet.from_cfg(TINY).load_weights(path)
    elif kind == "image":
        image = load_image(path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        (dets,) = detector([image])
        h, w = image.shape[:2]
        boxes = dets.boxes
        assert bool(((boxes[:, 0::2] >= 0) & (boxes[:, 0::2] <= w)).all())
        assert bool(((boxes[:, 1::2] >= 0) & (boxes[:, 1::2] <= h)).all())
    elif kind == "label":
        parse_label_file(path, num_classes=NUM_CLASSES)
    elif kind == "checkpoint":
        load_checkpoint(path)
    elif kind == "recipe":
        read_recipe(path)
    elif kind == "onnx":
        from yolo_prune.export.quantize import quantize_onnx_int8

        calibration = [np.zeros((1, 3, 32, 32), dtype=np.float32)]
        quantize_onnx_int8(path, path.with_name("int8.onnx"), calibration=calibration)
    else:  # pragma: no cover - the table is checked below
        raise AssertionError(kind)


def _case_file(case: dict, tmp: Path, good: Good) -> Path:
    if "make" in case:
        return MAKERS[case["make"]](tmp, good)
    return HERE / case["file"]


def _ids(cases: list[dict]) -> list[str]:
    return [c["id"] for c in cases]


def test_the_table_is_well_formed():
    ids = _ids(CASES)
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 40
    for case in CASES:
        assert case["kind"] in KINDS, case
        assert ("file" in case) != ("make" in case), case
        assert "make" not in case or case["make"] in MAKERS, case
        assert "file" not in case or (HERE / case["file"]).exists(), case
        assert case["error"] == "ok" or issubclass(
            getattr(errors, case["error"]), errors.YoloPruneError
        ), case
        assert case["error"] == "ok" or case.get("message"), case
    committed = {
        p
        for p in HERE.rglob("*")
        if p.is_file() and p.parent != HERE and "__pycache__" not in p.parts
    }
    listed = {HERE / c["file"] for c in CASES if "file" in c}
    assert committed <= listed, f"files no case uses: {sorted(committed - listed)}"
    assert all(p.stat().st_size < 4096 for p in committed), "commit only tiny files"


LIBRARY_CASES = [c for c in CASES if c.get("library", True)]  # the rest check a job (CLI)


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=_ids(LIBRARY_CASES))
def test_library(case, tmp_path, good, detector):
    path = _case_file(case, tmp_path, good)
    if case["error"] == "ok":
        _read(case["kind"], path, detector)
        return
    start = time.perf_counter()
    with pytest.raises(getattr(errors, case["error"])) as info:
        _read(case["kind"], path, detector)
    message = str(info.value)
    assert time.perf_counter() - start < 10, "an error must come quickly"
    assert case["message"] in message
    assert "\n" not in message and len(message) < 400, message
    assert path.name in message, f"the message does not name the file: {message}"
    assert not list(tmp_path.glob("*.ran")), "unpickling ran code"


LABEL_CASES = [c for c in CASES if c["kind"] == "label"]


@pytest.mark.parametrize("case", LABEL_CASES, ids=_ids(LABEL_CASES))
def test_training_and_evaluation_read_a_label_file_alike(case, tmp_path):
    # One reader, one rule: the dataset `train` builds and the one `eval` builds accept the
    # same files and refuse the same files with the same one-line error.
    data = _label_dataset(tmp_path / "data", HERE / case["file"])

    def train():
        return TrainDataset(data, split="val", size=32, num_classes=NUM_CLASSES)

    def evaluate():
        return load_detection_dataset(data, split="val")

    if case["error"] == "ok":
        assert [len(r.classes) for r in train().records] == [0]
        assert evaluate().num_annotations == 0
        return
    error = getattr(errors, case["error"])
    with pytest.raises(error) as in_training:
        train()
    with pytest.raises(error) as in_evaluation:
        evaluate()
    assert str(in_training.value) == str(in_evaluation.value)
    assert case["message"] in str(in_training.value)


def test_the_payload_does_run_code_when_loaded_unsafely(tmp_path, good):
    # Proof that the checkpoint cases test something: a plain unpickle of the file's pickle
    # (what torch.load does without weights_only) runs the payload. Done here with pickle on
    # our own crafted file, so no torch.load in the project ever skips weights_only.
    import pickle
    import zipfile

    path = make_checkpoint_runs_code(tmp_path, good)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    pickle.loads(data)
    assert (tmp_path / "code.ran").read_text() == "ran"


# --- through the CLI --------------------------------------------------------------------------


def _label_dataset(root: Path, label: Path) -> Path:
    """``root/images/val/<stem>.jpg`` with ``label`` as its YOLO label file."""
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "images" / "val" / f"{label.stem}.jpg").write_bytes(_encode(".jpg", _photo(48, 64)))
    (root / "labels" / "val" / f"{label.stem}.txt").write_bytes(label.read_bytes())
    return root


def _cli_args(kind: str, path: Path, tmp: Path, good: Good) -> list[str]:
    weights = _write(tmp / "tiny.weights", good.weights)
    if kind == "cfg":
        return ["info", str(path)]
    if kind == "weights":
        return ["info", str(TINY), "--weights", str(path)]
    if kind == "image":
        return ["detect", "--cfg", str(TINY), "--weights", str(weights), "--source", str(path),
                "--out", str(tmp / "out")]  # fmt: skip
    if kind == "label":
        data = _label_dataset(tmp / "data", path)
        return ["eval", "--cfg", str(TINY), "--weights", str(weights), "--data", str(data)]
    if kind == "checkpoint":
        data = _label_dataset(tmp / "data", HERE / "labels" / "empty.txt")
        return ["eval", "--cfg", str(TINY), "--weights", str(path), "--data", str(data)]
    raise AssertionError(kind)


MNIST = ROOT.parent / "shared" / "data" / "mnist"


def _job_args(case: dict, path: Path, tmp: Path, good: Good) -> list[str]:
    """``yolo-prune prune`` (or ``sweep`` at the case's ``ratios``) of the recipe on the tiny
    detector and a one-image detection dataset, or on LeNet-5 / MNIST (``cfg: lenet5``,
    ``data: mnist``): every case must stop before any training."""
    weights = _write(tmp / "tiny.weights", good.weights)
    cfg = ROOT / "cfg" / "lenet5.cfg" if case.get("cfg") == "lenet5" else TINY
    if case.get("data") == "mnist":
        data = MNIST
    else:
        data = _label_dataset(tmp / "data", HERE / "labels" / "empty.txt")
    args = ["--recipe", str(path), "--cfg", str(cfg), "--data", str(data), "--out",
            str(tmp / "out"), "--no-latency", "--no-deploy", "--no-progress"]  # fmt: skip
    if cfg == TINY:
        args += ["--weights", str(weights)]
    if "ratios" in case:
        return ["sweep", *args, "--ratios", case["ratios"], "--methods", "all"]
    return ["prune", *args, "--ratio", "0.5"]


CLI_CASES = [c for c in CASES if c.get("cli", True)]


@pytest.mark.parametrize("case", CLI_CASES, ids=_ids(CLI_CASES))
def test_cli(case, tmp_path, good, capsys, request):
    if case.get("cli_xfail"):
        request.applymarker(pytest.mark.xfail(reason=case["cli_xfail"], strict=False))
    path = _case_file(case, tmp_path, good)
    if case["kind"] == "recipe":
        args = _job_args(case, path, tmp_path, good)
    else:
        args = _cli_args(case["kind"], path, tmp_path, good)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(args)
    out, err = capsys.readouterr()
    # Outside pytest, a Python warning is more lines on stderr around the one error line.
    noise = [str(w.message).splitlines()[0] for w in caught]
    if case["error"] == "ok":
        assert code == 0, err
        if case["kind"] == "image":
            assert (tmp_path / "out" / "detections.json").is_file()
            assert (tmp_path / "out" / path.name).is_file()  # the annotated copy
        return
    assert code == 2
    assert not noise, f"warnings besides the error: {noise}"
    assert err.startswith(f"yolo-prune {args[0]}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert case.get("cli_message", case["message"]) in err
    assert case.get("names_file") is False or path.name in err
    assert not list(tmp_path.glob("*.ran")), "unpickling ran code"
    assert not (tmp_path / "out" / "report.json").exists() and not list(
        tmp_path.glob("out/phases/*")
    ), "nothing may run before the error"


# A few in real processes: the console entry point, and stderr as a user sees it (C libraries'
# own warnings included).
SUBPROCESS_CASES = ["checkpoint-runs-code", "png-truncated"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_cli_subprocess(case_id, tmp_path, good):
    (case,) = [c for c in CASES if c["id"] == case_id]
    path = _case_file(case, tmp_path, good)
    args = _cli_args(case["kind"], path, tmp_path, good)
    proc = subprocess.run([sys.executable, "-m", "yolo_prune.cli.main", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert case.get("cli_message", case["message"]) in proc.stderr
    assert not list(tmp_path.glob("*.ran")), "unpickling ran code"
