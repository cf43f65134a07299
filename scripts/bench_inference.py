"""Forward-pass FPS of our PyTorch Darknet against OpenCV DNN's Darknet importer, side by side.

    python scripts/bench_inference.py --out bench.json [--threads 2] [--rounds 5]

For each model (default: yolov4-tiny and yolov3-tiny at 416, yolov4 at 608) both runtimes load
the same cfg and .weights (the real ones from ../shared/data/weights where they exist, else
random weights written to a temporary .weights file), use the same number of CPU threads and run
the same random [1, 3, H, W] input. Rounds alternate between the two runtimes, so load from
other processes on the machine falls on both alike; each round times one runtime for
--seconds after a warm-up. Ours runs in its inference form (batch norms folded into the
convolutions, channels-last memory, torch.inference_mode); OpenCV runs with its defaults
(its own fused layers, Winograd convolutions). Pre- and post-processing are not timed.

Prints one line per model with both medians and the ratio (ours FPS / OpenCV FPS) and writes
every figure, per round, to --out as JSON.
"""

from __future__ import annotations

import os

# Must be set before torch loads its OpenMP runtime. With the default (spinning) wait policy,
# a torch thread that finishes its share of a layer spins at the barrier; when another process
# holds one of the cores, its partner thread then waits a scheduler slice per parallel region
# and a 20 ms forward pass takes 100-1000 ms. Passive waiting costs little on an idle machine
# and avoids that collapse on a shared one. OpenCV's own thread pool is not affected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from yolo_prune.darknet import Darknet  # noqa: E402
from yolo_prune.detect import prepare_for_inference  # noqa: E402
from yolo_prune.eval.latency import (  # noqa: E402
    device_description,
    random_weights_,
    time_calls,
)
from yolo_prune.utils.io import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("yolov4-tiny:416", "yolov3-tiny:416", "yolov4:608")


def bench_one(name: str, size: int, args: argparse.Namespace, tmp: Path) -> dict:
    cfg = args.data / "cfg" / f"{name}.cfg"
    real = args.data / "weights" / f"{name}.weights"
    model = Darknet.from_cfg(cfg, size=size)
    if real.is_file():
        model.load_weights(real)
        weights, kind = real, "real"
    else:
        random_weights_(model, model.input_shape)
        weights, kind = tmp / f"{name}.weights", "random"
        model.save_weights(weights)
    ours = prepare_for_inference(model, inplace=True)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    outs = net.getUnconnectedOutLayersNames()

    x = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(1))
    blob = x.numpy().copy()
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def run_ours() -> None:
        with torch.inference_mode():
            ours(x_cl)

    def run_opencv() -> None:
        net.setInput(blob)
        net.forward(outs)

    # Same input, same answer: a benchmark of two different computations would mean nothing.
    with torch.inference_mode():
        y = ours(x_cl)[0]
    net.setInput(blob)
    ref = np.concatenate(net.forward(outs))
    obj_err = float(abs(np.sort(y[:, 4].numpy()) - np.sort(ref[:, 4])).max())

    rounds = {"ours": [], "opencv": []}
    for r in range(args.rounds):
        order = (("ours", run_ours), ("opencv", run_opencv))
        for key, fn in order if r % 2 == 0 else order[::-1]:
            t = time_calls(fn, warmup=args.warmup, runs=3, min_seconds=args.seconds)
            rounds[key].append(t)
    result = {"model": name, "size": size, "weights": kind, "objectness_max_abs_diff": obj_err}
    for key in ("ours", "opencv"):
        all_ms = [t * 1000 for ts in rounds[key] for t in ts]
        med = statistics.median(all_ms)
        result[key] = {
            "latency_ms": med,
            "fps": 1000.0 / med,
            "round_median_ms": [statistics.median(ts) * 1000 for ts in rounds[key]],
            "runs": len(all_ms),
        }
    result["ratio"] = result["ours"]["fps"] / result["opencv"]["fps"]
    per_round = [
        o / p
        for o, p in zip(
            result["opencv"]["round_median_ms"], result["ours"]["round_median_ms"], strict=True
        )
    ]
    result["ratio_per_round"] = per_round
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="write the figures here as JSON")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="name:size ...")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per runtime")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes before each round")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    report = {
        "device": device_description("cpu"),
        "threads": {"torch": torch.get_num_threads(), "opencv": cv2.getNumThreads()},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": {
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "python": platform.python_version(),
        },
        "results": [],
    }
    print(
        f"{report['device']}; torch {torch.__version__}, OpenCV {cv2.__version__}; "
        f"OMP_WAIT_POLICY={report['omp_wait_policy']}"
    )
    print(f"{'model':<14} {'size':>4} {'weights':<7} {'ours ms':>9} {'OpenCV ms':>10} "
          f"{'ours FPS':>9} {'OpenCV FPS':>11} {'ratio':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            name, _, size = spec.partition(":")
            r = bench_one(name, int(size or 416), args, Path(tmp))
            report["results"].append(r)
            print(
                f"{name:<14} {r['size']:>4} {r['weights']:<7} {r['ours']['latency_ms']:>9.1f} "
                f"{r['opencv']['latency_ms']:>10.1f} {r['ours']['fps']:>9.2f} "
                f"{r['opencv']['fps']:>11.2f} {r['ratio']:>6.2f}  (per round: "
                + ", ".join(f"{x:.2f}" for x in r["ratio_per_round"])
                + ")",
                flush=True,
            )
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
