"""Inference latency and throughput: warm-up, then timed forward passes.

Figures are wall-clock times of the model's forward pass on a random input already in place
(no image decoding, pre- or post-processing), reported as the median over the timed passes.
The device (CPU model and thread count, or GPU name) is recorded with them, because a figure
without its machine means nothing.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Latency:
    """Timing of one model at one batch size."""

    batch_size: int  # images per forward pass
    latency_ms: float  # median wall time of one forward pass, milliseconds
    latency_ms_min: float  # fastest pass, milliseconds
    latency_ms_p90: float  # 90th percentile pass, milliseconds
    fps: float  # images per second at the median: batch_size * 1000 / latency_ms
    runs: int  # timed passes (after warm-up)
    device: str  # where it ran (see device_description)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU flags that decide which kernels a runtime can use: AVX2 and AVX-512 for float
# convolutions, VNNI and AMX for INT8 (without them an INT8 model may be no faster than float).
_VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def vector_extensions() -> str:
    """The CPU's vector extensions among :data:`_VECTOR_FLAGS`, e.g. ``"avx2 avx512f"``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(x for x in _VECTOR_FLAGS if x in flags) or "none of avx2+"
    except OSError:
        pass
    return "unknown"


def device_description(device: torch.device | str = "cpu") -> str:
    """``"cpu: <CPU model> [<vector extensions>], <n> threads (<m> cores)"`` or
    ``"cuda:0: <GPU name>"``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{dev}: {torch.cuda.get_device_name(dev)}"
    return (
        f"cpu: {_cpu_name()} [{vector_extensions()}], {torch.get_num_threads()} threads "
        f"({os.cpu_count()} cores)"
    )


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    runs: int = 10,
    min_seconds: float = 0.0,
    max_runs: int = 1000,
    synchronize: Callable[[], None] | None = None,
) -> list[float]:
    """Wall times of calls to ``fn``, in seconds, after ``warmup`` untimed calls.

    Times at least ``runs`` calls, and keeps going until ``min_seconds`` have been spent timing
    (at most ``max_runs`` calls). ``synchronize`` (e.g. ``torch.cuda.synchronize``) is called
    before each clock read, so asynchronous work is counted.
    """
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    spent = 0.0
    while len(times) < runs or (spent < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - start
        times.append(dt)
        spent += dt
    return times


def summarize(times: list[float], *, batch_size: int, device: str) -> Latency:
    """A :class:`Latency` from per-pass wall times in seconds."""
    ms = sorted(t * 1000.0 for t in times)
    median = statistics.median(ms)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return Latency(
        batch_size=batch_size,
        latency_ms=median,
        latency_ms_min=ms[0],
        latency_ms_p90=p90,
        fps=batch_size * 1000.0 / median,
        runs=len(ms),
        device=device,
    )


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    batch_size: int = 1,
    warmup: int = 3,
    runs: int = 10,
    min_seconds: float = 1.0,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    seed: int = 0,
) -> Latency:
    """Latency and FPS of ``model`` on a random ``[batch_size, *input_shape]`` input.

    The model runs as given (call :func:`yolo_prune.detect.prepare_for_inference` first to time
    the inference form); it is switched to eval mode for the measurement and back afterwards.

    Args:
        model: the network, already on ``device``.
        input_shape: ``(channels, height, width)``.
        batch_size: images per forward pass.
        warmup: untimed passes first (lazy initialisation, caches, allocator, clock ramp-up).
        runs: at least this many timed passes.
        min_seconds: keep timing until this much time was spent (steadier figures).
        device: where the input is made and the timing synchronised.
        channels_last: make the input channels-last (what a prepared model runs fastest on).
        seed: seed of the random input.
    """
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, *input_shape), generator=gen).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    was_training = model.training
    model.eval()
    try:
        times = time_calls(
            lambda: model(x), warmup=warmup, runs=runs, min_seconds=min_seconds, synchronize=sync
        )
    finally:
        model.train(was_training)
    return summarize(times, batch_size=batch_size, device=device_description(dev))


@torch.inference_mode()
def compare_latency(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, int, int] | Mapping[str, tuple[int, int, int]],
    *,
    rounds: int = 5,
    runs: int = 4,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
) -> dict[str, Latency]:
    """Batch-1 latency of several models measured side by side, in alternating rounds.

    Each round times ``runs`` passes of every model in turn, so load from other processes or
    clock changes hit all of them alike; the ratio of two results is what to quote.
    ``input_shape``: one ``(C, H, W)`` for all, or one per model name (a model at a smaller
    input timed beside the others).
    """
    dev = torch.device(device)
    shapes = {name: tuple(input_shape[name] if isinstance(input_shape, Mapping) else input_shape)
              for name in models}  # fmt: skip
    inputs = {}
    for shape in set(shapes.values()):
        x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(0)).to(dev)
        inputs[shape] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():
        model.eval()
        x = inputs[shapes[name]]
        time_calls(lambda m=model, x=x: m(x), warmup=warmup, runs=0, synchronize=sync)
    for _ in range(rounds):
        for name, model in models.items():
            x = inputs[shapes[name]]
            times[name] += time_calls(lambda m=model, x=x: m(x), warmup=0, runs=runs,
                                      synchronize=sync)  # fmt: skip
    desc = device_description(dev)
    return {name: summarize(t, batch_size=1, device=desc) for name, t in times.items()}


@torch.no_grad()
def random_weights_(model: nn.Module, input_shape: tuple[int, int, int], *, seed: int = 0):
    """Random weights for timing a model that has no trained ones, in place; returns it in eval
    mode.

    He-normal convolutions, random batch-norm scales in [0.5, 1.5] and shifts in [-0.1, 0.1],
    and running statistics measured on one random ``input_shape`` image: activations stay O(1)
    through the network, so no runtime meets denormal floats (which would slow one down and not
    another), and latency does not depend on what weights were learnt.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.2 - 0.1)
            m.reset_running_stats()
            m.momentum = None  # one batch sets the statistics
    model.train()
    model(torch.rand((1, *input_shape), generator=gen))
    return model.eval()
