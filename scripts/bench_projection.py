#!/usr/bin/env python
"""Benchmark (issue 4, acceptance 4): global projection over yolov4; ADMM step overhead.

    python scripts/bench_projection.py --out runs/bench [--threads 2]

1. One global top-k projection over tensors shaped like every conv weight of ``cfg/yolov4.cfg``
   (~64M weights, i.i.d. normal values), at several ratios, plain and with the conservative
   policy's caps (first layer at most 50% pruned, rising to 100% at layer 104, the backbone end).
   Figures: seconds per projection (best and median of ``--repeat``).
2. A training step on ``cfg/yolov4-tiny.cfg`` (YOLO loss, SGD with momentum, synthetic boxes)
   with and without the ADMM hook. Figures: seconds per plain step and per ADMM step (median
   over interleaved runs), the ADMM overhead per step, and the Z/U update (one projection)
   amortised over ``--update-every`` steps.

Writes ``bench.json`` and ``bench.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from yolo_prune.darknet import Darknet
from yolo_prune.engine import Hook, Trainer
from yolo_prune.errors import PruneError
from yolo_prune.prune.admm import ADMMConfig, ADMMHook
from yolo_prune.prune.base import prepare_targets, target_weights
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.projections import project_global
from yolo_prune.prune.targets import TargetConfig

ROOT = Path(__file__).resolve().parents[1]


def bench_projection(cfg: Path, ratios: list[float], repeat: int) -> dict:
    model = Darknet.from_cfg(cfg)
    names, _ = prepare_targets(model, TargetConfig(protect="none"), None)
    # Same shapes as yolov4's conv weights, values i.i.d. normal: PyTorch's default init scales
    # each layer by 1/sqrt(fan_in), and a global cut of such weights would empty the widest
    # layers (which the projection refuses); trained weights are what a real run projects.
    gen = torch.Generator().manual_seed(0)
    weights = {
        n: torch.randn(w.shape, generator=gen) for n, w in target_weights(model, names).items()
    }
    total = sum(w.numel() for w in weights.values())
    # yolov4's backbone (CSPDarknet53) ends at layer 104.
    policy = ConservativePolicy(first_cap=0.5, last_cap=1.0, backbone_end=104)
    _, caps = prepare_targets(model, TargetConfig(protect="none"), policy)
    rows = []
    for ratio in ratios:
        for label, kw in (("plain", {}), ("policy", {"caps": caps})):
            times = []
            try:
                for _ in range(repeat):
                    t = time.perf_counter()
                    masks = project_global(weights, ratio, **kw)
                    times.append(time.perf_counter() - t)
            except PruneError as exc:  # the caps cannot hold this ratio: a result too
                rows.append({"ratio": ratio, "caps": label, "error": str(exc)})
                print(f"projection r={ratio} {label}: {exc}")
                continue
            pruned = sum(int((~m).sum()) for m in masks.values())
            if pruned != round(ratio * total):
                raise SystemExit(f"pruned {pruned}, expected {round(ratio * total)}")
            rows.append(
                {
                    "ratio": ratio,
                    "caps": label,
                    "best_s": min(times),
                    "median_s": statistics.median(times),
                    "pruned": pruned,
                }
            )
            print(f"projection r={ratio} {label}: best {min(times):.3f} s, median "
                  f"{statistics.median(times):.3f} s")  # fmt: skip
    return {"cfg": cfg.name, "tensors": len(weights), "weights": total, "rows": rows}


def bench_admm_step(cfg: Path, *, size: int, batch: int, steps: int, update_every: int) -> dict:
    torch.manual_seed(0)
    model = Darknet.from_cfg(cfg, size=size)
    model.train()
    try:
        from yolo_prune.detect.loss import YoloLoss

        yolo_loss = YoloLoss.from_model(model)
        g = torch.Generator().manual_seed(0)
        boxes = torch.rand(batch * 4, 4, generator=g) * torch.tensor([0.6, 0.6, 0.3, 0.3]) + 0.2
        targets = torch.cat(
            [
                torch.arange(batch).repeat_interleave(4)[:, None].float(),
                torch.randint(0, 80, (batch * 4, 1), generator=g).float(),
                boxes * size,
            ],
            dim=1,
        )

        def loss_fn(m, b):
            return yolo_loss(m(b), targets, (size, size))[0]

        loss_name = "YoloLoss"
    except ImportError:

        def loss_fn(m, b):
            return sum(o.pow(2).mean() for o in m(b))

        loss_name = "squared outputs"

    x = torch.rand(batch, 3, size, size)
    names, _ = prepare_targets(model, TargetConfig(), None)
    # Same-scale weights in every layer (see bench_projection): a global cut of PyTorch's
    # fan-in-scaled init would empty the widest layers. Values do not change a step's cost.
    with torch.no_grad():
        for w in target_weights(model, names).values():
            w.normal_(0.0, 0.05)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9, weight_decay=5e-4)
    admm = ADMMHook(names, ADMMConfig(ratio=0.9, epochs=1, stages=1, update_every=0))
    admm.init_(target_weights(model, names))

    class Timer(Hook):
        def before_step(self, state):
            self.t = time.perf_counter()

        def after_step(self, state):
            self.times.append(time.perf_counter() - self.t)

    plain_t, admm_t = Timer(), Timer()
    plain_t.times, admm_t.times = [], []
    plain = Trainer(model, opt, loss_fn, hooks=[plain_t])
    with_admm = Trainer(model, opt, loss_fn, hooks=[admm, admm_t])
    plain.fit([x], epochs=2)  # warm-up (allocator, first-call overheads)
    plain_t.times.clear()
    for _ in range(steps):  # interleaved, so load changes hit both alike
        plain.fit([x], epochs=1)
        with_admm.state.epoch = 0
        with_admm.fit([x], epochs=1)
    # Trainer.fit's epoch_end ran ADMM's Z/U update after every step above (update_every=0,
    # one-step epochs) but outside the timed span; time that update on its own.
    upd = []
    for _ in range(5):
        t = time.perf_counter()
        admm.update_(target_weights(model, names))
        upd.append(time.perf_counter() - t)
    p, a = statistics.median(plain_t.times), statistics.median(admm_t.times)
    u = statistics.median(upd)
    res = {
        "cfg": cfg.name,
        "input": [batch, 3, size, size],
        "loss": loss_name,
        "targets": len(names),
        "target_weights": sum(w.numel() for w in target_weights(model, names).values()),
        "plain_step_s": p,
        "admm_step_s": a,
        "overhead_per_step": a / p - 1,
        "zu_update_s": u,
        "update_every": update_every,
        "overhead_amortised": (a + u / update_every) / p - 1,
        "plain_steps": plain_t.times,
        "admm_steps": admm_t.times,
    }
    print(
        f"{cfg.name} {batch}x3x{size}x{size}: plain {p:.3f} s, ADMM {a:.3f} s "
        f"(+{100 * res['overhead_per_step']:.1f}%), Z/U update {u:.3f} s, amortised over "
        f"{update_every} steps +{100 * res['overhead_amortised']:.1f}%"
    )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ratios", type=float, nargs="*", default=[0.5, 0.9, 0.99])
    ap.add_argument("--size", type=int, default=416, help="yolov4-tiny input size")
    ap.add_argument("--batch", type=int, default=4, help="yolov4-tiny batch size")
    ap.add_argument("--steps", type=int, default=8, help="timed steps of each kind")
    ap.add_argument("--update-every", type=int, default=100, help="steps between Z/U updates")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    result = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "loadavg_before": load_before,
        },
        "projection": bench_projection(ROOT / "cfg" / "yolov4.cfg", args.ratios, args.repeat),
        "admm_step": bench_admm_step(
            ROOT / "cfg" / "yolov4-tiny.cfg",
            size=args.size,
            batch=args.batch,
            steps=args.steps,
            update_every=args.update_every,
        ),
    }
    with open("/proc/loadavg") as f:
        result["machine"]["loadavg_after"] = f.read().split()[:3]
    (args.out / "bench.json").write_text(json.dumps(result, indent=2))
    proj = result["projection"]
    step = result["admm_step"]
    lines = [
        "# Projection and ADMM-step benchmark",
        "",
        f"torch {result['machine']['torch']}, {result['machine']['threads']} threads, "
        f"load average before/after {' '.join(load_before)} / "
        f"{' '.join(result['machine']['loadavg_after'])}",
        "",
        f"## Global projection over {proj['cfg']}: {proj['weights']:,} conv weights in "
        f"{proj['tensors']} tensors",
        "",
        "| ratio | caps | best s | median s |",
        "|---|---|---|---|",
        *[
            f"| {r['ratio']} | {r['caps']} | {r['best_s']:.3f} | {r['median_s']:.3f} |"
            if "error" not in r
            else f"| {r['ratio']} | {r['caps']} | infeasible: caps allow less | |"
            for r in proj["rows"]
        ],
        "",
        f"## Training step on {step['cfg']}, input {step['input']}, {step['loss']}",
        "",
        f"plain {step['plain_step_s']:.3f} s; with ADMM {step['admm_step_s']:.3f} s "
        f"(+{100 * step['overhead_per_step']:.1f}% per step); Z/U update "
        f"{step['zu_update_s']:.3f} s, every {step['update_every']} steps: "
        f"+{100 * step['overhead_amortised']:.1f}% amortised.",
    ]
    (args.out / "bench.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
