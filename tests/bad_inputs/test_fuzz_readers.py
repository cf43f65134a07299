"""Property-based fuzzing of the cfg parser and the weights reader (hypothesis).

Every input either parses or raises our own error type (:mod:`yolo_prune.errors`), never
another exception, and quickly (a per-example deadline catches a hang). The default run tries a
few hundred inputs per reader, derandomized so that it is reproducible; the tests marked
``slow`` try a few thousand fresh ones each time.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from yolo_prune.darknet import Darknet, build_graph, parse_cfg
from yolo_prune.darknet.cfg import ACTIVATIONS, SCHEMA, SECTION_ALIASES
from yolo_prune.darknet.weights import load_darknet_weights
from yolo_prune.errors import CfgError, WeightsError

TINY = Path(__file__).resolve().parent / "tiny.cfg"

DEFAULT = {"deadline": 2000, "database": None, "suppress_health_check": [HealthCheck.too_slow]}
FAST = settings(max_examples=300, derandomize=True, **DEFAULT)
SLOW = settings(max_examples=3000, **DEFAULT)


# --- cfg ----------------------------------------------------------------------------------------

KEYS = sorted({key for options in SCHEMA.values() for key in options})
NUMBERS = st.one_of(
    st.integers(-3, 8),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUES = st.one_of(
    NUMBERS.map(str),
    st.lists(st.integers(-12, 12), min_size=1, max_size=4).map(lambda v: ",".join(map(str, v))),
    st.lists(NUMBERS.map(str), min_size=1, max_size=6).map(",".join),
    st.sampled_from(ACTIVATIONS + ("", ",", "1,,2", "0x10", "1e400", "nan", "-0")),
    st.text(max_size=12),
)
HEADERS = st.one_of(
    st.sampled_from(sorted(SECTION_ALIASES)).map(lambda name: f"[{name}]"),
    st.text(max_size=10).map(lambda name: f"[{name}]"),
    st.just("[net"),
)
LINES = st.one_of(
    HEADERS,
    st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.text(max_size=8), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.sampled_from(["", "# comment", "; comment", "  filters = 8  # inline", "\t", "="]),
    st.text(max_size=30),
)
# Mostly a real [net] first, so that the graph builder, not only the parser, is exercised.
NET = st.tuples(st.integers(1, 64), st.integers(1, 64), st.integers(1, 4)).map(
    lambda whc: f"[net]\nwidth={whc[0]}\nheight={whc[1]}\nchannels={whc[2]}\n"
)
CFG_TEXT = st.tuples(
    st.one_of(NET, st.just("")),
    st.lists(LINES, max_size=40),
    st.sampled_from(["\n", "\r\n", "\r"]),
).map(lambda t: t[0].replace("\n", t[2]) + t[2].join(t[1]))

# Whole sections of known kinds with their own options and mostly sensible values, so that a
# good share of the cfgs are valid networks and the layers themselves get built and run.
SMALL = st.one_of(
    st.integers(-4, 4),
    st.sampled_from([1, 2, 3, 8, 16, 21]),
    st.lists(st.integers(-4, 3), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
    st.sampled_from(ACTIVATIONS[:6] + ("none", "per_channel", "per_feature", "0.5", "4,6,8,10")),
)


@st.composite
def section_text(draw) -> str:
    kind = draw(st.sampled_from([k for k in SCHEMA if k != "net"]))
    keys = draw(st.lists(st.sampled_from(sorted(SCHEMA[kind]) or ["x"]), max_size=5))
    return "\n".join([f"[{kind}]", *(f"{key}={draw(SMALL)}" for key in keys)])


NETWORKS = st.tuples(NET, st.lists(section_text(), min_size=1, max_size=8)).map(
    lambda t: t[0] + "\n".join(t[1]) + "\n"
)


def _parse_and_build(text: str) -> None:
    """Parse ``text``, resolve its graph and, when it is small, build and run the network;
    only :class:`CfgError` may come out."""
    stage = "parse"
    try:
        sections = parse_cfg(text, path="fuzz.cfg")
        stage = "graph"
        graph = build_graph(sections)
        stage = "model"
        if graph.params > 100_000 or graph.bflops > 0.01:
            event("graph built (too big to run)")
            return
        model = Darknet(sections)
        c, h, w = model.input_shape
        with torch.no_grad():
            model.eval()(torch.rand(1, c, h, w))
        event("model built and run")
    except CfgError as exc:
        event(f"CfgError at {stage}")
        assert "\n" not in str(exc) and len(str(exc)) < 1000, str(exc)


@FAST
@given(st.text(max_size=400))
def test_cfg_any_text(text):
    _parse_and_build(text)


@FAST
@given(CFG_TEXT)
def test_cfg_like_text(text):
    _parse_and_build(text)


@FAST
@given(NETWORKS)
def test_cfg_networks_of_known_sections(text):
    _parse_and_build(text)


@FAST
@given(st.data())
def test_cfg_mutated_from_a_real_one(data):
    _parse_and_build(_mutate_lines(data, TINY.read_text(encoding="utf-8")))


@pytest.mark.slow
@SLOW
@given(st.text(max_size=2000))
def test_cfg_any_text_long(text):
    _parse_and_build(text)


@pytest.mark.slow
@SLOW
@given(CFG_TEXT)
def test_cfg_like_text_long(text):
    _parse_and_build(text)


@pytest.mark.slow
@SLOW
@given(NETWORKS)
def test_cfg_networks_of_known_sections_long(text):
    _parse_and_build(text)


@pytest.mark.slow
@SLOW
@given(st.data())
def test_cfg_mutated_from_a_real_one_long(data):
    _parse_and_build(_mutate_lines(data, TINY.read_text(encoding="utf-8")))


def _mutate_lines(data: st.DataObject, text: str) -> str:
    """``text`` with a few lines deleted, duplicated, swapped or replaced by fuzzed ones."""
    lines = text.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "value"]))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "replace":
            lines[i] = data.draw(LINES)
        elif "=" in lines[i]:
            lines[i] = lines[i].split("=")[0] + "=" + data.draw(VALUES)
    return "\n".join(lines)


# --- weights ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[Darknet, bytes]:
    """The tiny network and a valid ``.weights`` file of it (header 0.2.5)."""
    torch.manual_seed(0)
    model = Darknet.from_cfg(TINY)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.weights"
        model.save_weights(path)
        return model, path.read_bytes()


def _load(model: Darknet, data: bytes) -> None:
    """Load ``data`` as a weights file; only :class:`WeightsError` may come out."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.weights"
        path.write_bytes(data)
        try:
            load_darknet_weights(model, path)
            event("loaded")
        except WeightsError as exc:
            event("WeightsError")
            assert "\n" not in str(exc) and "fuzz.weights" in str(exc), str(exc)


HEADER_INTS = st.one_of(st.integers(-3, 3), st.integers(-(2**31), 2**31 - 1))


@st.composite
def mutated_weights(draw, good: bytes) -> bytes:
    """A valid file cut, extended, given another header, or with bytes overwritten."""
    op = draw(st.sampled_from(["cut", "extend", "header", "overwrite", "splice"]))
    if op == "cut":
        return good[: draw(st.integers(0, len(good)))]
    if op == "extend":
        return good + draw(st.binary(min_size=1, max_size=64))
    if op == "header":
        major, minor, revision = draw(st.tuples(HEADER_INTS, HEADER_INTS, HEADER_INTS))
        seen = draw(st.sampled_from([4, 8]))
        return struct.pack("<3i", major, minor, revision) + b"\0" * seen + good[20:]
    if op == "overwrite":
        at = draw(st.integers(0, len(good) - 1))
        patch = draw(st.binary(min_size=1, max_size=32))
        return good[:at] + patch + good[at + len(patch) :]
    at = draw(st.integers(0, len(good)))
    return good[:at] + draw(st.binary(max_size=16)) + good[at:]


@FAST
@given(st.binary(max_size=256))
def test_weights_any_bytes(tiny, data):
    _load(tiny[0], data)


@FAST
@given(st.data())
def test_weights_mutated_from_a_real_file(tiny, data):
    _load(tiny[0], data.draw(mutated_weights(tiny[1])))


@pytest.mark.slow
@SLOW
@given(st.binary(max_size=20_000))
def test_weights_any_bytes_long(tiny, data):
    _load(tiny[0], data)


@pytest.mark.slow
@SLOW
@given(st.data())
def test_weights_mutated_from_a_real_file_long(tiny, data):
    _load(tiny[0], data.draw(mutated_weights(tiny[1])))
