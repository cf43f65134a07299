"""Building a runtime for a model, or timing the candidates and keeping the fastest."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from yolo_prune.errors import ConfigError

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "opencv")


@dataclass
class RuntimeChoice:
    """Which runtime runs a model, and the side-by-side timings that chose it."""

    name: str  # torch, onnxruntime or opencv
    model: nn.Module  # the model in that runtime
    latency_ms: dict[str, float] = field(default_factory=dict)  # batch 1, per candidate timed
    failed: dict[str, str] = field(default_factory=dict)  # candidate -> why it could not run


def _build(model: nn.Module, name: str, *, threads: int | None, compile_mish: bool | None):
    if name == "torch":
        from yolo_prune.detect.detector import prepare_for_inference

        return prepare_for_inference(model, compile_mish=compile_mish)
    if name == "onnxruntime":
        from yolo_prune.export.onnx import export_onnx_bytes
        from yolo_prune.runtime.onnxrt import OnnxRuntimeModel

        data, _ = export_onnx_bytes(model, input_shape=tuple(model.input_shape))
        return OnnxRuntimeModel(data, threads=threads, name="exported model")
    if name == "opencv":
        from yolo_prune.runtime.opencv import OpenCVModel

        if getattr(model, "fused", False) or not hasattr(model, "sections"):
            raise ConfigError("OpenCV runs Darknet cfg+weights; this model has none to give it")
        return OpenCVModel.from_darknet(model, threads=threads)
    raise ConfigError(f"unknown runtime {name!r}; choose one of: {', '.join(RUNTIMES)}")


def _time_ms(model: nn.Module, x: torch.Tensor, seconds: float) -> list[float]:
    from yolo_prune.eval.latency import time_calls

    with torch.inference_mode():
        times = time_calls(lambda: model(x), warmup=2, runs=3, min_seconds=seconds, max_runs=50)
    return [t * 1000.0 for t in times]


def build_runtime(
    model: nn.Module,
    runtime: str = "auto",
    *,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    compile_mish: bool | None = None,
    seconds: float = 0.6,
) -> RuntimeChoice:
    """``model`` ready to run in ``runtime`` (eval mode, no autograd).

    Args:
        model: a Darknet detector (BN not folded), or a model already bound to a runtime (an
            :class:`~yolo_prune.runtime.OnnxRuntimeModel`), which runs only there.
        runtime: ``torch`` (:func:`~yolo_prune.detect.prepare_for_inference`), ``onnxruntime``
            (exported in memory), ``opencv`` (cfg+weights handed to ``cv2.dnn``), or ``auto``:
            on the CPU, each of the three that can run the model is timed at batch 1 in
            alternating rounds of about ``seconds``, and the fastest is kept; on a GPU, torch.
        device: torch device; ONNX Runtime and OpenCV run on the CPU only.
        threads: CPU threads for ONNX Runtime and OpenCV (default: torch's thread count).
        compile_mish: passed to :func:`~yolo_prune.detect.prepare_for_inference`.
        seconds: timing budget per candidate and round for ``auto``.

    Raises:
        ConfigError: an unknown runtime, one that cannot run this model or on this device.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    bound = getattr(model, "runtime_name", None)
    if bound is not None:
        if runtime not in ("auto", bound):
            raise ConfigError(
                f"this model runs in {bound} only; --runtime {runtime} needs the Darknet "
                "cfg+weights (or .sparse) it was exported from"
            )
        return RuntimeChoice(bound, model.eval())
    on_cpu = torch.device(device).type == "cpu"
    if runtime != "torch" and not on_cpu:
        if runtime == "auto":
            runtime = "torch"
        else:
            raise ConfigError(f"--runtime {runtime} runs on the CPU; use --device cpu")
    if runtime != "auto":
        return RuntimeChoice(
            runtime,
            _build(model, runtime, threads=threads, compile_mish=compile_mish).to(device),
        )
    built: dict[str, nn.Module] = {}
    failed: dict[str, str] = {}
    for name in RUNTIMES[1:]:
        try:
            built[name] = _build(model, name, threads=threads, compile_mish=compile_mish)
        except Exception as exc:  # a runtime that cannot take this model is not a candidate
            failed[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            logger.info("runtime %s cannot run this model: %s", name, failed[name])
    if "torch" not in built:
        raise ConfigError(f"cannot prepare the model for inference: {failed.get('torch')}")
    x = torch.rand((1, *model.input_shape), generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {name: [] for name in built}
    order = list(built)
    for rnd in range(2):  # alternate, so drift in machine load hits every candidate alike
        for name in order if rnd == 0 else order[::-1]:
            times[name] += _time_ms(built[name], x, seconds / 2)
    latency = {name: statistics.median(t) for name, t in times.items()}
    best = min(latency, key=latency.get)
    logger.info(
        "runtimes at batch 1: %s; using %s",
        ", ".join(f"{k} {v:.1f} ms" for k, v in latency.items()),
        best,
    )
    return RuntimeChoice(best, built[best], latency, failed)


def time_runtimes(
    models: Mapping[str, nn.Module],
    *,
    runtimes: Sequence[str] = RUNTIMES[1:],
    rounds: int = 5,
    runs: int = 4,
    threads: int | None = None,
) -> dict[str, dict[str, float | str]]:
    """Batch-1 latency of every model in every runtime, all timed side by side.

    Args:
        models: name -> model, each timed at its own input shape (a model at a smaller input
            beside the others). A model bound to a runtime (an INT8 ``.onnx`` in ONNX Runtime)
            is timed there only.
        runtimes: which of ``torch``, ``onnxruntime``, ``opencv`` to try.
        rounds, runs: alternating rounds of ``runs`` passes of each (model, runtime) in turn
            (:func:`yolo_prune.eval.latency.compare_latency`), so machine load hits all alike.
        threads: CPU threads for ONNX Runtime and OpenCV (default: torch's).

    Returns:
        ``{model name: {runtime: median latency in ms, or why it could not run (str)}}``.
    """
    from yolo_prune.eval.latency import compare_latency

    built: dict[str, nn.Module] = {}
    shapes: dict[str, tuple[int, int, int]] = {}
    out: dict[str, dict[str, float | str]] = {name: {} for name in models}
    for name, model in models.items():
        bound = getattr(model, "runtime_name", None)
        for runtime in (bound,) if bound else runtimes:
            key = f"{name}\t{runtime}"
            try:
                built[key] = build_runtime(model, runtime, threads=threads).model
                shapes[key] = tuple(model.input_shape)
            except Exception as exc:  # recorded in the table, not fatal to the others
                out[name][runtime] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    results = compare_latency(built, shapes, rounds=rounds, runs=runs)
    for key, latency in results.items():
        name, runtime = key.split("\t")
        out[name][runtime] = latency.latency_ms
    return out
