"""Dense vs structurally pruned YOLO on CPU: params, GFLOPs and latency in three runtimes.

    python scripts/bench_structured.py --out bench_structured.json [--round-to 8] [--quick]

For each model (yolov4 at 608, yolov4-tiny at 416) the dense network and copies with 30%, 50%
and 70% of their prunable channels removed are timed side by side in our PyTorch model (batch
norms fused, eval, channels-last, inference mode, eager ``aten::mish``; "torch-cmish": the same
with mish compiled, ``prepare_for_inference``'s default on the CPU), ONNX Runtime (the model
exported with ``yolo_prune.export.onnx``) and OpenCV DNN (``cv2.dnn.readNetFromDarknet`` of the
cfg+weights written by ``yolo_prune.export.darknet``).

The weights are random (He-normal convolutions, batch-norm statistics measured on a random
batch): latency and FLOPs do not depend on what the weights have learnt, and random weights
need no download. Pruning is structured: whole channel groups ranked by filter L1 norm
(relative to the layer's mean), one global ratio of channels, with the conservative policy
(at most ``--first-cap`` of the first layer's filters may go, rising linearly to
``--last-cap`` at the last layer), then folded and physically shrunk
(``yolo_prune.darknet.surgery``). ``--round-to 8`` keeps every pruned layer's width a multiple
of 8.

Every (variant, runtime) pair is timed once per round, the order reversed every other round,
so load from other processes falls on all of them alike; the figure is the median over all
rounds. "Speed-up" is dense latency / pruned latency, set against the FLOPs speed-up (dense
GFLOPs / pruned GFLOPs); acceptance 3 asks for latency speed-up >= 0.7 x FLOPs speed-up at 50%
for yolov4. ``--quick`` (for the test) runs yolov4-tiny only, at 50%, with one timed pass.
"""

from __future__ import annotations

import os

# before torch loads OpenMP: see scripts/bench_inference.py
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
from yolo_prune.darknet.surgery import fold_pruned_, shrink  # noqa: E402
from yolo_prune.detect import prepare_for_inference  # noqa: E402
from yolo_prune.eval.latency import (  # noqa: E402
    device_description,
    random_weights_,
    time_calls,
)
from yolo_prune.export import export_darknet, export_onnx  # noqa: E402
from yolo_prune.prune.base import prepare_targets, target_weights  # noqa: E402
from yolo_prune.prune.masks import apply_masks_  # noqa: E402
from yolo_prune.prune.policy import ConservativePolicy  # noqa: E402
from yolo_prune.prune.structured import build_projection  # noqa: E402
from yolo_prune.prune.targets import TargetConfig  # noqa: E402
from yolo_prune.utils.io import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNTIMES = ("torch", "torch-cmish", "onnxruntime", "opencv")


def prune_structured(model: Darknet, ratio: float, args: argparse.Namespace) -> Darknet:
    """A shrunk copy of ``model`` without ``ratio`` of its prunable channels."""
    import copy

    model = copy.deepcopy(model)
    policy = ConservativePolicy(first_cap=args.first_cap, last_cap=args.last_cap)
    names, caps = prepare_targets(model, TargetConfig(), policy)
    project = build_projection(
        model, names, "global-channels", criterion="l1", round_to=args.round_to
    )
    apply_masks_(model, project(target_weights(model, names), ratio, caps=caps))
    pruned = model.zero_channel_groups()
    return shrink(fold_pruned_(model, pruned), pruned).eval()


def runners(model: Darknet, tmp: Path, tag: str, threads: int, x: torch.Tensor) -> dict:
    """``runtime -> (call, output rows [N, 5 + C])`` for one model variant."""
    import onnxruntime as ort

    fast = prepare_for_inference(model, compile_mish=False)
    fast_cmish = prepare_for_inference(model, compile_mish=True)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return fast(x_cl)[0].numpy()

    def run_torch_cmish() -> np.ndarray:
        with torch.inference_mode():
            return fast_cmish(x_cl)[0].numpy()

    onnx_path = tmp / f"{tag}.onnx"
    export_onnx(model, onnx_path, input_shape=model.input_shape)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}

    def run_ort() -> np.ndarray:
        return session.run(None, feed)[0][0]

    cfg, weights = tmp / f"{tag}.cfg", tmp / f"{tag}.weights"
    export_darknet(model, cfg, weights)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    outs = net.getUnconnectedOutLayersNames()
    blob = x.numpy().copy()

    def run_opencv() -> np.ndarray:
        net.setInput(blob)
        return np.concatenate(net.forward(outs))

    return {"torch": run_torch, "torch-cmish": run_torch_cmish, "onnxruntime": run_ort,
            "opencv": run_opencv}  # fmt: skip


def bench_model(name: str, size: int, ratios: list[float], args: argparse.Namespace) -> dict:
    dense = Darknet.from_cfg(args.data / "cfg" / f"{name}.cfg", size=size)
    random_weights_(dense, dense.input_shape)
    x = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(1))
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in [0.0, *ratios]:
            model = dense if ratio == 0 else prune_structured(dense, ratio, args)
            calls = runners(model, Path(tmp), f"{name}-{ratio}", args.threads, x)
            # The three runtimes must compute the same thing, or the timings compare nothing.
            ref = calls["torch"]()
            agree = {
                rt: float(np.abs(np.sort(calls[rt]()[:, 4]) - np.sort(ref[:, 4])).max())
                for rt in RUNTIMES[1:]
            }
            widths = [s.out_shape[0] for s in model.graph.layers if s.kind == "convolutional"]
            variants[ratio] = {
                "calls": calls,
                "row": {
                    "ratio": ratio,
                    "params": model.graph.params,
                    "gflops": model.graph.bflops,
                    "conv_widths_multiple_of_8": sum(w % 8 == 0 for w in widths) / len(widths),
                    "objectness_max_abs_diff_vs_torch": agree,
                    "round_ms": {rt: [] for rt in RUNTIMES},
                },
            }
            print(f"  {name} {ratio:.0%}: {model.graph.bflops:.2f} GFLOPs, outputs agree to "
                  + ", ".join(f"{k} {v:.1e}" for k, v in agree.items()), flush=True)  # fmt: skip
        pairs = [(r, rt) for r in variants for rt in RUNTIMES]
        for rnd in range(args.rounds):
            for r, rt in pairs if rnd % 2 == 0 else pairs[::-1]:
                times = time_calls(variants[r]["calls"][rt], warmup=args.warmup, runs=args.reps)
                variants[r]["row"]["round_ms"][rt].append([t * 1000 for t in times])
            print(f"  {name}: round {rnd + 1}/{args.rounds} done", flush=True)
    base = variants[0.0]["row"]
    rows = []
    for r in variants:
        row = variants[r]["row"]
        row["latency_ms"] = {
            rt: statistics.median(t for ts in row["round_ms"][rt] for t in ts) for rt in RUNTIMES
        }
        row["flops_speedup"] = base["gflops"] / row["gflops"]
        row["latency_speedup"] = {
            rt: base["latency_ms"][rt] / row["latency_ms"][rt] for rt in RUNTIMES
        }
        row["latency_speedup_over_flops_speedup"] = {
            rt: row["latency_speedup"][rt] / row["flops_speedup"] for rt in RUNTIMES
        }
        rows.append(row)
    return {"model": name, "size": size, "weights": "random", "variants": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="write the figures here as JSON")
    p.add_argument("--data", type=Path, default=REPO, help="folder with cfg/ (default: repo)")
    p.add_argument("--models", nargs="+", default=["yolov4:608", "yolov4-tiny:416"])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--round-to", type=int, default=1, help="pruned layer widths multiple of")
    p.add_argument("--first-cap", type=float, default=0.5, help="policy: first layer's cap")
    p.add_argument("--last-cap", type=float, default=0.9, help="policy: last layer's cap")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    p.add_argument("--reps", type=int, default=2, help="timed passes per pair and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per pair and round")
    p.add_argument("--quick", action="store_true", help="yolov4-tiny at 50%%, one timed pass")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.ratios, args.rounds, args.reps = ["yolov4-tiny:416"], [0.5], 1, 1

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    import onnxruntime as ort

    report = {
        "device": device_description("cpu"),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "opencv": cv2.__version__,
            "python": platform.python_version(),
        },
        "pruning": {
            "criterion": "l1",
            "groups": "channel groups (yolo_prune.darknet.channels)",
            "policy": {"first_cap": args.first_cap, "last_cap": args.last_cap},
            "round_to": args.round_to,
        },
        "rounds": args.rounds,
        "reps": args.reps,
        "results": [],
    }
    print(f"{report['device']}; torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"OpenCV {cv2.__version__}; round_to={args.round_to}", flush=True)  # fmt: skip
    for spec in args.models:
        name, _, size = spec.partition(":")
        report["results"].append(bench_model(name, int(size or 416), args.ratios, args))
    cols = " ".join(f"{rt + ' ms':>14} {'x':>5} {'x/FLOPs x':>9}" for rt in RUNTIMES)
    print(f"{'model':<12} {'removed':>7} {'params M':>8} {'GFLOPs':>7} {'FLOPs x':>7} {cols}")
    for res in report["results"]:
        for row in res["variants"]:
            cells = " ".join(
                f"{row['latency_ms'][rt]:>14.1f} {row['latency_speedup'][rt]:>5.2f} "
                f"{row['latency_speedup_over_flops_speedup'][rt]:>9.2f}"
                for rt in RUNTIMES
            )
            print(f"{res['model']:<12} {row['ratio']:>7.0%} {row['params'] / 1e6:>8.2f} "
                  f"{row['gflops']:>7.2f} {row['flops_speedup']:>7.2f} {cells}")  # fmt: skip
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
