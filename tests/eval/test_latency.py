"""Latency measurement: warm-up, counting, statistics, device, model state."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from yolo_prune.eval.latency import device_description, measure_latency, summarize, time_calls


def test_warmup_calls_are_not_timed_and_runs_are_counted():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=4, runs=6)
    assert len(calls) == 10 and len(times) == 6
    assert all(t >= 0 for t in times)


def test_min_seconds_extends_the_timing():
    times = time_calls(lambda: time.sleep(0.01), warmup=0, runs=1, min_seconds=0.1)
    assert len(times) >= 8 and sum(times) >= 0.1
    capped = time_calls(lambda: None, warmup=0, runs=2, min_seconds=10.0, max_runs=50)
    assert len(capped) == 50


def test_a_known_sleep_is_measured():
    times = time_calls(lambda: time.sleep(0.02), warmup=1, runs=5)
    lat = summarize(times, batch_size=4, device="cpu")
    assert 19.0 <= lat.latency_ms < 200.0  # generous upper bound: a shared machine
    assert lat.fps == pytest.approx(4 * 1000.0 / lat.latency_ms)


def test_summarize_statistics():
    lat = summarize([0.010, 0.030, 0.020, 0.040, 0.050], batch_size=2, device="x")
    assert (lat.latency_ms, lat.latency_ms_min, lat.latency_ms_p90) == pytest.approx((30, 10, 50))
    assert lat.fps == pytest.approx(2 / 0.030) and lat.runs == 5
    assert lat.to_dict()["device"] == "x"


def test_measure_latency_restores_training_mode_and_records_the_device():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).train()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, i[0].shape)))
    lat = measure_latency(model, (3, 16, 16), batch_size=3, warmup=2, runs=4, min_seconds=0)
    assert model.training
    assert len(seen) == 6 and all(not training for training, _ in seen)
    assert seen[0][1] == (3, 3, 16, 16)
    assert lat.batch_size == 3 and lat.runs == 4 and lat.fps > 0
    assert lat.device == device_description("cpu")
    assert f"{torch.get_num_threads()} threads" in lat.device and lat.device.startswith("cpu")
