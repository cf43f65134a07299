#!/usr/bin/env python
"""A classifier (LeNet-5 / MNIST, ResNet-56 / CIFAR-10): every method of its recipe from the
same dense weights at the same budget, over seeds; nothing but ``yolo-prune sweep`` calls.

    python scripts/prune_classifier.py --data ../shared/data/mnist --out runs/lenet5 \
        [--seeds 0,1,2] [--methods admm-global,magnitude-oneshot] [--device cuda]

The dataset picks the recipe (``cfg/recipes/lenet5.yaml`` for MNIST, ``resnet56.yaml`` for
CIFAR-10). For each seed, one ``yolo-prune sweep --methods ... --ratios own --set
train.seed=S`` under ``--out/seed-S``: the dense model is trained there once (the recipe's
``dense_epochs``) and every method starts from it and spends the recipe's ``budget_epochs``.
Then ``--out/results.json`` and ``results.md``: per method, the sparsity, top-1 (mean and worst
over the seeds) against the dense top-1 of the same seed, and the minutes each run took.
Finished points are kept when run again (the sweep resumes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"mnist": "lenet5", "cifar10": "resnet56"}


def sweep(data: Path, out: Path, model: str, seed: int, methods: str, extra: list[str]) -> dict:
    args = ["sweep", "--cfg", f"cfg/{model}.cfg", "--data", str(data), "--methods", methods,
            "--ratios", "own", "--set", f"train.seed={seed}", "--out", str(out),
            "--no-progress", *extra]  # fmt: skip
    print("+ yolo-prune " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "yolo_prune.cli.main", *args], cwd=ROOT, check=True)
    return json.loads((out / "sweep.json").read_text())


def table(runs: dict[int, dict]) -> tuple[list[dict], str]:
    """Per method: its figures over the seeds, and the Markdown table of them."""
    rows = []
    methods = [p["method"] for p in next(iter(runs.values()))["points"]]
    for method in methods:
        points = {s: next(p for p in r["points"] if p["method"] == method) for s, r in runs.items()}
        deltas = [points[s]["top1"] - runs[s]["dense"]["top1"] for s in runs]
        rows.append({
            "method": method,
            "sparsity": statistics.mean(p["sparsity"] for p in points.values()),
            "top1_mean": statistics.mean(p["top1"] for p in points.values()),
            "top1_worst": min(p["top1"] for p in points.values()),
            "delta_mean": statistics.mean(deltas),
            "delta_worst": min(deltas),
            "minutes_mean": statistics.mean(p["minutes"] for p in points.values()),
            "seeds": sorted(runs),
        })  # fmt: skip
    dense = [r["dense"]["top1"] for r in runs.values()]
    lines = [
        f"Seeds {sorted(runs)}; dense top-1 {100 * statistics.mean(dense):.2f}% (mean), "
        f"{100 * min(dense):.2f}% (worst).",
        "",
        "| method | sparsity % | compression | top-1 % mean | worst | vs dense, mean | worst "
        "| minutes (mean) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compression = 1 / max(1e-9, 1 - r["sparsity"])
        lines.append(
            f"| {r['method']} | {100 * r['sparsity']:.2f} | {compression:.0f}x "
            f"| {100 * r['top1_mean']:.2f} | {100 * r['top1_worst']:.2f} "
            f"| {100 * r['delta_mean']:+.2f} | {100 * r['delta_worst']:+.2f} "
            f"| {r['minutes_mean']:.1f} |"
        )
    return rows, "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="MNIST or CIFAR-10 folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default="all", help="recipe variants (default: all)")
    p.add_argument("--device", default="cpu")
    a, extra = p.parse_known_args()  # anything else goes to yolo-prune sweep (--set ...)
    kind = "mnist" if (a.data / "t10k-images-idx3-ubyte.gz").is_file() else "cifar10"
    runs = {}
    for seed in (int(s) for s in a.seeds.split(",")):
        runs[seed] = sweep(a.data.resolve(), (a.out / f"seed-{seed}").resolve(), RECIPES[kind],
                           seed, a.methods, ["--device", a.device, *extra])  # fmt: skip
    rows, md = table(runs)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps({"rows": rows, "runs": runs}, indent=1) + "\n")
    (a.out / "results.md").write_text(md)
    print(md, end="")


if __name__ == "__main__":
    main()
