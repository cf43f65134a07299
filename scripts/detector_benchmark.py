#!/usr/bin/env python
"""Pruning methods side by side on real detectors, at equal cost, with the same fine-tuning.

    .venv/bin/python scripts/detector_benchmark.py [--out runs/detector_benchmark]
        [--models yolov3-tiny,yolo-fastest] [--epochs 5] [--admm-epochs 5] [--labels 0]
        [--round-to 8]
        [--flops 0.65,0.45] [--ratios 0.5,0.7,0.9] [--jobs 2]
        [--parts structured,unstructured,resolution]

For each model (real COCO weights, input 320, fine-tuned on the 128 coco128 train images,
scored on its 64 val images), every point is one ``yolo-prune prune`` run of a recipe the script
writes (``<out>/<model>/recipe.yaml``: the model's own ``train`` settings, and for every method
the same ``--epochs`` of masked fine-tuning, the same dense-teacher distillation (by default
from the teacher alone, ``--labels 0``: the labels of 128 images overfit), a least-squares
refit on 32 training images of every one-shot structured cut (none after ADMM, whose training
leads up to its cut; unstructured: see ``magnitude-refit`` below) and the same multiples of
``--round-to`` channels), so the methods differ only in how they choose what to remove:

* structured, at each ``--flops`` target (the fraction of the dense FLOPs the shrunk model keeps;
  ``prune --flops`` searches each method's ratio): ``ours`` (``admm-filter``: global structured
  ADMM on the batch-norm scales, Fisher ranking, conservative early layers, ``--admm-epochs``
  before the cut), ``l1`` (filter L1 norm, one shot, Li et al. 2017), ``bn`` (batch-norm scale,
  network slimming's criterion, one shot), ``tp-magnitude`` and ``tp-taylor`` (Torch-Pruning's
  own channel choice, ``pip install 'yolo_prune[bench]'``). A run that fails (Torch-Pruning
  cannot trace, no ratio reaches the target, ...) is kept as a row with its error.
* unstructured, at each ``--ratios``: ``ours-u`` (global ADMM, conservative policy) against
  ``magnitude`` (one-shot global magnitude, Han et al. 2015: no refit) and ``magnitude-refit``
  (the same cut with its kept weights refitted to the dense model by least squares on 32
  training images, the job's default for a one-shot cut), same fine-tuning.
* resolution, a reference at each ``--flops`` target, not a pruning method: the dense model,
  untouched, at the largest smaller input (a multiple of 32) that costs no more than the target
  (``yolo-prune export --format darknet --size S``, then ``yolo-prune eval``). It answers the
  first question a user has: does a cut beat simply running the model smaller?

Points run ``--jobs`` at a time (default 2), each ``yolo-prune`` process on its share of the
CPU cores (``OMP_NUM_THREADS``): two one-thread trainings on two cores get through more epochs
an hour than one two-thread training, whose small convolutions do not use both cores fully.

Latency: at the end, ``yolo-prune bench`` times the dense model and every shrunk model side by
side in one run (batch 1, each in our PyTorch form, ONNX Runtime and OpenCV; the fastest is
the row's figure), so the methods compare on the same machine state; each job's own timing is
kept as ``latency_ms_job`` (``--no-retime`` keeps it as the figure).

Every rival is compared with ours at the same point by the paired bootstrap over the val images
(``scripts/compare_points.py``, the shrunk model where channels went). Writes per model
``results.json``, ``results.md`` and ``structured.png`` (AP50 against the shrunk model's batch-1
latency in its fastest runtime, measured side by side with dense in the same run; one line per
method, dense marked). Finished points are kept when run again (delete a folder to redo it).
Nothing here but CLI calls: every figure comes from ``yolo-prune``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from yolo_prune.jobs.prune import smaller_side
from yolo_prune.jobs.recipe import read_recipe

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODELS = {  # name: (cfg, weights file in shared/data/weights, recipe with its train settings)
    "yolov3-tiny": ("cfg/yolov3-tiny.cfg", "yolov3-tiny.weights", "cfg/recipes/yolov3-tiny.yaml"),
    "yolo-fastest": (
        "cfg/yolo-fastest-1.1-xl.cfg",
        "yolo-fastest-1.1-xl.weights",
        "cfg/recipes/yolo-fastest-1.1-xl.yaml",
    ),
}
STRUCTURED = ("ours", "l1", "bn", "tp-magnitude", "tp-taylor")
UNSTRUCTURED = ("ours-u", "magnitude", "magnitude-refit")
PARTS = ("structured", "unstructured", "resolution")
REFERENCE = "dense-smaller"  # the resolution part's one row per target
SIZE = 320  # every point's input side
STRIDE = 32  # both models run at any multiple of it


def bench_recipe(model: str, epochs: int, admm_epochs: int, *, labels: float = 0.0,
                 round_to: int = 8) -> dict:  # fmt: skip
    """The model's recipe (its train settings, size, policy) with the benchmark's variants."""
    cfg, _, recipe_path = MODELS[model]
    base = read_recipe(ROOT / recipe_path)  # the job's own loader: the same checks, the same
    variants = base["methods"]  # reading of every value (variants keyed by name)
    # structured ours: the model recipe's own `admm-filter` policy, ranking, refit and depth where
    # it has them (Yolo-Fastest: importance per FLOP, whole residual blocks in the ranking, tuned
    # on a training split), else the method's conservative defaults
    own_s = variants.get("admm-filter") or {}
    own_keys = ("cost", "refit", "depth")
    structured = {"policy": own_s.get("policy") or {"first_cap": 0.2, "last_cap": 0.5},
                  **{k: own_s[k] for k in own_keys if k in own_s}}  # fmt: skip
    if structured.get("depth") == "only":  # whole blocks alone cannot land within 2% of a FLOPs
        # target (Yolo-Fastest: 0.673x at best for 0.65x): rank them with the channels, which
        # fill in, refitted at the cut (docs/detector_benchmark.md, session 18; section 15 of
        # docs/structured_tuning.md)
        structured.update(depth=True, refit=32)
    # unstructured ours: the model recipe's own conservative policy (yolov3-tiny: capped up to
    # the end of its backbone, cfg layer 12); a ramp over every layer cannot reach 0.9
    policy_u = (variants.get("admm") or {}).get("policy") or {"first_cap": 0.3, "last_cap": 1.0}
    tuned = {"epochs": epochs}
    rounded = {"round_to": round_to}  # every structured method: the same channel multiples
    methods = [
        {"name": "ours", "method": "admm-filter", "epochs": admm_epochs, "stages": 1,
         "retrain_epochs": epochs, **structured, **rounded},
        {"name": "l1", "method": "channel", "criterion": "l1", **tuned, **rounded},
        {"name": "bn", "method": "channel", "criterion": "bn", **tuned, **rounded},
        {"name": "tp-magnitude", "method": "torch-pruning", "importance": "magnitude", **tuned,
         **rounded},
        {"name": "tp-taylor", "method": "torch-pruning", "importance": "taylor", **tuned,
         **rounded},
        {"name": "ours-u", "method": "admm", "epochs": admm_epochs, "stages": 1,
         "retrain_epochs": epochs, "policy": policy_u},
        {"name": "magnitude", "method": "magnitude", "iterations": 1, "refit": 0, **tuned},
        {"name": "magnitude-refit", "method": "magnitude", "iterations": 1, "refit": 32,
         **tuned},
    ]  # fmt: skip
    return {
        "model": cfg,
        "size": 320,
        "train": base.get("train") or {},
        "phases": base.get("phases") or {},
        "distill": 1.0,  # the same dense teacher for every method
        "labels": labels,  # 0: every method learns from the teacher alone (labels overfit)
        # no `refit` key: the job's default, a least-squares refit on 32 training images of
        # every one-shot cut, and none after ADMM (whose training leads up to its cut:
        # docs/structured_tuning.md, section 8)
        "methods": methods,
    }


def plan(parts: str, flops: str, ratios: str, methods: str) -> list[tuple[str, str, tuple, str]]:
    """The points to run, in order: ``(part, target folder, CLI flag, method)``; the
    resolution part's method is :data:`REFERENCE`, whatever ``methods`` says.

    Raises:
        ValueError: an unknown part or method.
    """
    chosen = parts.split(",")  # whole names: "structured" is a substring of "unstructured"
    wanted = methods.split(",")
    for name, given, known in (("--parts", chosen, PARTS),
                               ("--methods", wanted, STRUCTURED + UNSTRUCTURED)):  # fmt: skip
        unknown = [x for x in given if x not in known]
        if unknown:
            raise ValueError(f"{name}: unknown {', '.join(unknown)}; expected some of "
                             f"{', '.join(known)}")  # fmt: skip
    points = []
    if "structured" in chosen:
        points += [("structured", f"flops{f}", ("--flops", f), m)
                   for f in flops.split(",") for m in STRUCTURED if m in wanted]  # fmt: skip
    if "unstructured" in chosen:
        points += [("unstructured", f"r{r}", ("--ratio", r), m)
                   for r in ratios.split(",") for m in UNSTRUCTURED if m in wanted]  # fmt: skip
    if "resolution" in chosen:
        points += [("resolution", f"flops{f}", ("--flops", f), REFERENCE) for f in flops.split(",")]
    return points


@dataclass(frozen=True)
class Calls:
    """How this script's CLI calls run: ``threads`` CPU threads each (``OMP_NUM_THREADS``),
    and ``latency``: whether each ``prune`` times its models (not when ``retime`` will)."""

    threads: int
    latency: bool = True

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads)}


def prune(point: Path, recipe: Path, cfg: str, weights: Path, data: Path, method: str,
          *extra: str, calls: Calls) -> dict:  # fmt: skip
    """One ``yolo-prune prune`` point; its report, or its error when the run failed."""
    report = point / "report.json"
    if report.is_file():
        return json.loads(report.read_text())
    point.mkdir(parents=True, exist_ok=True)
    args = ["prune", "--recipe", str(recipe), "--cfg", cfg, "--weights", str(weights),
            "--data", str(data),
            "--method", method, "--out", str(point), "--no-deploy", "--no-progress",
            *([] if calls.latency else ["--no-latency"]), *extra]  # fmt: skip
    print("+ yolo-prune " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "yolo_prune.cli.main", *args], cwd=ROOT,
                         capture_output=True, text=True, env=calls.env)  # fmt: skip
    (point / "log.txt").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        lines = [x for x in run.stderr.strip().splitlines() if x.strip()]
        error = {"error": lines[-1] if lines else f"exit {run.returncode}",
                 "minutes": (time.perf_counter() - t0) / 60}  # fmt: skip
        (point / "error.json").write_text(json.dumps(error, indent=1) + "\n")
        print("  failed: " + error["error"], flush=True)
        return error
    (point / "error.json").unlink(missing_ok=True)  # an earlier try's (ours' caps relaxed)
    return json.loads(report.read_text())


# Ours' policy cap raised, in steps, where the recipe's caps cannot reach a point's target; the
# rivals have no caps. Structured: ``last_cap`` (any layer at most half: yolov3-tiny with
# multiples of 8 channels stops at 0.50x FLOPs), the first cap kept. Unstructured: ``first_cap``,
# the start of the ramp over the backbone (Yolo-Fastest's recipe, 0.3 over layers 0-106, stops
# at 86.8% of the weights).
RELAX = {"ours": ("last_cap", (0.6, 0.7, 0.8, 0.9, 1.0)),
         "ours-u": ("first_cap", (0.5, 0.7, 0.9, 1.0))}  # fmt: skip
CAPS_TOO_TIGHT = ("relax the policy's caps", "raise the caps")  # the job's two refusals


def relax_caps(report: dict, point: Path, recipe: Path, cfg: str, weights: Path, data: Path,
               method: str, flag: tuple[str, ...], calls: Calls) -> dict:  # fmt: skip
    """Ours at a target its caps cannot reach: the least relaxation (:data:`RELAX`) that
    reaches it; the row names the cap that ran."""
    key, steps = RELAX[method]
    for cap in steps:
        if not any(p in report.get("error", "") for p in CAPS_TOO_TIGHT):
            break
        print(f"  {method}: caps too tight for {' '.join(flag)}; {key} {cap}", flush=True)
        report = prune(point, recipe, cfg, weights, data, method, *flag,
                       "--set", f"methods.{method}.policy.{key}={cap}", calls=calls)  # fmt: skip
    return report


def compare(val: Path, ours: Path, rival: Path, calls: Calls, *, cfg: Path | None = None) -> dict:
    """Paired bootstrap of AP50, ours minus rival, over the val images; a kept result is
    reused only if it is newer than both points' files (a point run again is compared
    again). ``rival``: a prune output folder, or a ``.weights`` file with its ``cfg``."""
    folder = rival if cfg is None else rival.parent
    out = folder / f"vs-{ours.name}.json"
    newest = max(f.stat().st_mtime for f in (ours / "report.json", rival if cfg else
                                             rival / "report.json"))  # fmt: skip
    if not out.is_file() or out.stat().st_mtime < newest:
        subprocess.run([sys.executable, "scripts/compare_points.py", "--data", str(val),
                        "--a", str(ours), "--b", str(rival), "--out", str(out),
                        *(["--cfg", str(cfg)] if cfg else [])],
                       cwd=ROOT, check=True, capture_output=True, env=calls.env)  # fmt: skip
    return json.loads(out.read_text())


def cli(args: list[str], calls: Calls) -> subprocess.CompletedProcess:
    """One ``yolo-prune`` call, its output captured; raises CalledProcessError if it fails."""
    print("+ yolo-prune " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "yolo_prune.cli.main", *args], cwd=ROOT,
                          check=True, capture_output=True, text=True, env=calls.env)  # fmt: skip


def smaller_input(fraction: float, gflops: Callable[[int], float]) -> int | None:
    """The largest input side under :data:`SIZE`, a multiple of :data:`STRIDE`, at which the
    dense model costs at most ``fraction`` of its GFLOPs at :data:`SIZE` (2% over allowed, as
    the prune report's smaller-input column); ``gflops(side)``: the dense model's GFLOPs there."""
    return smaller_side(SIZE, STRIDE, fraction * gflops(SIZE), gflops)


def dense_at(m: Setup, side: int, folder: Path, calls: Calls) -> tuple[Path, Path]:
    """The dense cfg+weights written for input ``side`` (``yolo-prune export --format darknet``),
    kept under ``folder``."""
    cfg, weights = folder / "dense.cfg", folder / "dense.weights"
    if not (cfg.is_file() and weights.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        cli(["export", "--format", "darknet", "--cfg", m.cfg, "--weights", str(m.weights),
             "--size", str(side), "--out", str(folder / "dense")], calls)  # fmt: skip
    return cfg, weights


def reference(m: Setup, point: tuple, data: Path, calls: Calls) -> dict:
    """The resolution part's point: the dense model, untouched, at the largest smaller input
    that costs no more than the target; its ``yolo-prune eval`` figures with ``side`` and the
    dense GFLOPs at :data:`SIZE`, or its error."""
    _, target, (_, fraction), _ = point
    folder = m.root / "resolution" / target / REFERENCE
    out = folder / "eval.json"
    if out.is_file():
        return json.loads(out.read_text())
    t0 = time.perf_counter()

    measured: dict[int, float] = {}

    def gflops(side: int) -> float:  # each side asked of `yolo-prune info` once
        if side not in measured:
            info = cli(["info", m.cfg, "--size", str(side), "--json"], calls)
            measured[side] = json.loads(info.stdout)["bflops"]
        return measured[side]

    try:
        side = smaller_input(float(fraction), gflops)
        if side is None:
            return {"error": f"no input side under {SIZE} costs at most {fraction} of the FLOPs"}
        cfg, weights = dense_at(m, side, folder, calls)
        cli(["eval", "--cfg", str(cfg), "--weights", str(weights), "--data", str(data),
             "--runtime", "torch", "--no-latency", "--no-progress", "--out",
             str(folder / "eval.tmp.json")], calls)  # fmt: skip
    except subprocess.CalledProcessError as e:
        lines = [x for x in (e.stderr or "").strip().splitlines() if x.strip()]
        return {"error": lines[-1] if lines else f"exit {e.returncode}"}
    figures = json.loads((folder / "eval.tmp.json").read_text())
    figures.update(side=side, dense_gflops=gflops(SIZE), minutes=(time.perf_counter() - t0) / 60)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    (folder / "eval.tmp.json").unlink()
    return figures


def reference_row(target: str, figures: dict) -> dict:
    """A table row of the resolution part (the columns of :func:`row`)."""
    if "error" in figures:
        return {"method": REFERENCE, "target": target, "error": figures["error"]}
    return {
        "method": REFERENCE,
        "target": target,
        "input": figures["side"],
        "ratio": "-",
        "AP50": figures["AP50"],
        "gflops": figures["gflops"],
        "gflops_fraction": figures["gflops"] / figures["dense_gflops"],
        "latency_ms": None,  # timed beside dense and the cuts by retime
        "admm_residual": None,
        "minutes": figures["minutes"],
    }


def row(method: str, target: str, report: dict, policy: dict | None = None) -> dict:
    """A table row of one point; ``policy``: the recipe's policy of ``method``, against which
    the caps the point ran with (:func:`relax_caps`) are named."""
    if "error" in report:
        return {"method": method, "target": target, "error": report["error"]}
    shipped = report.get("shrunk") or report["pruned"]
    admm = report.get("admm") or {}
    ran = (report.get("options") or {}).get("policy") or {}
    return {
        "method": method,
        "target": target,
        "ratio": report.get("ratio"),
        "AP50": shipped.get("AP50"),
        "gflops": shipped.get("gflops"),
        "gflops_fraction": (shipped.get("gflops") or 0) / report["dense"]["gflops"],
        "latency_ms": shipped.get("latency_ms"),
        "dense_AP50": report["dense"].get("AP50"),
        "dense_latency_ms": report["dense"].get("latency_ms"),
        "sparsity": report.get("target_sparsity"),
        "admm_residual": admm.get("final_relative_residual"),
        "minutes": report.get("minutes"),
        "relaxed": ", ".join(f"{k} {v}" for k, v in ran.items() if (policy or {}).get(k) != v),
    }


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _ms(x) -> str:
    return "-" if not x else f"{x:.1f}"


def markdown(model: str, rows: list[dict], argv: list[str]) -> str:
    lines = [f"# {model}: pruning methods at equal cost, same fine-tuning", "",
             f"`{' '.join(['python', 'scripts/detector_benchmark.py', *argv])}`", "",
             f"CPU: {rows[0].get('cpu', '?') if rows else '?'}", "",
             "| part | target | method | AP50 | ours - it (95% CI) | GFLOPs (x dense) | "
             "latency ms | ratio | ADMM residual | minutes |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['part']} | {r['target']} | {r['method']} | failed: "
                         f"{r['error']} | | | | | | |")  # fmt: skip
            continue
        cmp = r.get("vs_ours")
        ci = (f"{100 * cmp['diff']:+.2f} [{100 * cmp['low']:+.2f}, {100 * cmp['high']:+.2f}]"
              if cmp else "")  # fmt: skip
        res = "-" if r["admm_residual"] is None else f"{r['admm_residual']:.4f}"
        name = r["method"] + (f" ({r['relaxed']})" if r.get("relaxed") else "")
        name += f" at {r['input']}x{r['input']} (not pruned)" if r.get("input") else ""
        lines.append(
            f"| {r['part']} | {r['target']} | {name} | {_pct(r['AP50'])} | {ci} | "
            f"{r['gflops']:.3f} ({r['gflops_fraction']:.3f}) | {_ms(r['latency_ms'])} | "
            f"{r['ratio']} | {res} | {r['minutes']:.1f} |"
        )
    timed = [r for r in rows if r.get("dense_latency_ms") and "dense_AP50" in r]  # pruned, retimed
    dense = (timed or [r for r in rows if "dense_AP50" in r] or [None])[0]
    if dense:
        lines += ["", f"Dense: AP50 {_pct(dense['dense_AP50'])}, "
                  f"{_ms(dense.get('dense_latency_ms'))} ms."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(model: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = {method: sorted((r["latency_ms"], 100 * r["AP50"]) for r in rows
                            if r["method"] == method and r["part"] == "structured"
                            and "error" not in r and r["latency_ms"])
             for method in STRUCTURED}  # fmt: skip
    if not any(lines.values()):  # an unstructured-only run: a folder's earlier plot stays
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    for method, pts in lines.items():
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=method)
    smaller = sorted((r["latency_ms"], 100 * r["AP50"]) for r in rows if r["part"] == "resolution"
                     and "error" not in r and r["latency_ms"])  # fmt: skip
    if smaller:
        ax.plot(*zip(*smaller, strict=True), marker="s", ls="--", c="grey",
                label="dense at a smaller input (not pruned)")  # fmt: skip
    dense = [r for r in rows if r.get("dense_latency_ms")]
    if dense:
        ms = sum(r["dense_latency_ms"] for r in dense) / len(dense)
        ax.scatter([ms], [100 * dense[0]["dense_AP50"]], marker="*", s=150, c="k", label="dense")
    ax.set_xlabel("batch-1 latency, shrunk model, fastest runtime (ms)")
    ax.set_ylabel("AP50 (%), 64 coco128 val images")
    ax.set_title(f"{model}: structured pruning at equal FLOPs")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def retime(m: Setup, rows: list[dict], calls: Calls) -> None:
    """Time dense, every structured point's shrunk model and the resolution part's smaller
    dense models side by side in one quiet run
    (``yolo-prune bench``) and make that the rows' ``latency_ms`` (each job's own timing, taken
    while other work may have loaded the machine, stays as ``latency_ms_job``)."""
    out = m.root / "latency.json"
    files = {"structured": ("pruned-shrunk.cfg", "pruned-shrunk.weights"),
             "resolution": ("dense.cfg", "dense.weights")}  # fmt: skip
    # every cfg carries the side it runs at (dense written at SIZE for it), so no --size
    dense_cfg, dense_weights = dense_at(m, SIZE, m.root / "dense", calls)
    specs = [f"dense={dense_cfg}:{dense_weights}"]
    for r in rows:
        if r["part"] in files and "error" not in r:
            folder = m.root / r["part"] / r["target"] / r["method"]
            cfg, weights = (folder / f for f in files[r["part"]])
            if cfg.is_file():
                specs.append(f"{r['target']}/{r['method']}={cfg}:{weights}")
    args = ["bench", "--json", str(out)]
    for spec in specs:
        args += ["--model", spec]
    print("+ yolo-prune " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "yolo_prune.cli.main", *args], cwd=ROOT, check=True)
    ms = json.loads(out.read_text())["ms"]

    def fastest(name: str) -> float | None:
        times = [v for v in ms.get(name, {}).values() if isinstance(v, float)]
        return min(times) if times else None

    for r in rows:
        key = f"{r['target']}/{r['method']}"
        if key in ms:
            r["latency_ms_job"] = r["latency_ms"]
            r["dense_latency_ms_job"] = r.get("dense_latency_ms")
            r["latency_ms"], r["dense_latency_ms"] = fastest(key), fastest("dense")
            r["latency_ms_by_runtime"] = ms[key]


@dataclass(frozen=True)
class Setup:
    """One model's benchmark: its cfg and dense weights, output folder, written recipe and each
    of its methods' policy (as written there)."""

    name: str
    cfg: str
    weights: Path
    root: Path
    recipe: Path
    policies: dict = field(default_factory=dict)


def setup(model: str, a: argparse.Namespace) -> Setup:
    cfg, weights_file, _ = MODELS[model]
    root = (a.out / model).resolve()
    root.mkdir(parents=True, exist_ok=True)
    recipe = root / "recipe.yaml"
    written = bench_recipe(model, a.epochs, a.admm_epochs, labels=a.labels, round_to=a.round_to)
    recipe.write_text(yaml.safe_dump(written, sort_keys=False))
    policies = {v["name"]: v.get("policy") for v in written["methods"]}
    return Setup(model, cfg, SHARED / "weights" / weights_file, root, recipe, policies)


def run_point(m: Setup, point: tuple, data: Path, calls: Calls) -> dict:
    """One planned point's report (or error); ours' caps relaxed if its target is missed."""
    part, target, flag, method = point
    if part == "resolution":
        return reference(m, point, data, calls)
    folder = m.root / part / target / method
    report = prune(folder, m.recipe, m.cfg, m.weights, data, method, *flag, calls=calls)
    if method in RELAX:
        report = relax_caps(report, folder, m.recipe, m.cfg, m.weights, data, method, flag,
                            calls)  # fmt: skip
    return report


def versus(m: Setup, point: tuple, report: dict, data: Path, calls: Calls) -> dict | None:
    """A rival's paired bootstrap against ours at its target (None for ours, or a failed run)."""
    part, target, _, method = point
    ours = "ours-u" if part == "unstructured" else "ours"  # first in its part's list
    mine = m.root / ("unstructured" if part == "unstructured" else "structured") / target / ours
    if method == ours or "error" in report or not (mine / "report.json").is_file():
        return None
    folder = m.root / part / target / method
    if part == "resolution":  # the smaller dense model: its cfg+weights, not a prune folder
        return compare(data, mine, folder / "dense.weights", calls, cfg=folder / "dense.cfg")
    return compare(data, mine, folder, calls)


def cpu() -> str:
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next(x.split(":", 1)[1].strip() for x in text.splitlines()
                    if x.startswith("model name"))  # fmt: skip
        have = set(next(x for x in text.splitlines() if x.startswith("flags")).split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in have)
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name} [{flags}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "detector_benchmark")
    p.add_argument("--data", type=Path, default=SHARED / "coco128")
    p.add_argument("--models", default="yolov3-tiny,yolo-fastest")
    p.add_argument("--epochs", type=int, default=5, help="masked fine-tuning epochs, every method")
    p.add_argument("--admm-epochs", type=int, default=5, help="ADMM epochs before ours' cut")
    p.add_argument("--labels", type=float, default=0.0,
                   help="weight of the label loss beside the teacher's, every method (0: the "
                   "teacher alone)")  # fmt: skip
    p.add_argument(
        "--round-to",
        type=int,
        default=8,
        help="every structured method keeps multiples of this many channels",
    )
    p.add_argument("--flops", default="0.65,0.45", help="structured FLOPs targets")
    p.add_argument("--ratios", default="0.5,0.7,0.9", help="unstructured ratios")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--methods", default=",".join(STRUCTURED + UNSTRUCTURED))
    p.add_argument("--no-retime", dest="retime", action="store_false",
                   help="keep each job's own latency instead of timing every shrunk model "
                   "beside dense in one run at the end")  # fmt: skip
    p.add_argument("--jobs", type=int, default=2,
                   help="points run at once, each on its share of the CPU cores")  # fmt: skip
    argv = sys.argv[1:]
    a = p.parse_args()
    if a.jobs < 1:
        p.error(f"--jobs: {a.jobs}; give 1 or more")
    # each job's own latency would be timed beside the other jobs: retime supersedes it
    calls = Calls(threads=max(1, (os.cpu_count() or 1) // a.jobs), latency=not a.retime)
    try:
        planned = plan(a.parts, a.flops, a.ratios, a.methods)
    except ValueError as e:
        p.error(str(e))
    unknown = [m for m in a.models.split(",") if m not in MODELS]
    if unknown:  # before any point runs
        p.error(f"--models: unknown {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
    setups = [setup(model, a) for model in a.models.split(",")]
    points = [(m, point) for m in setups for point in planned]
    # every model's points share one pool, then the comparisons (each needs ours' point of its
    # target), a.jobs at a time; the latency runs alone at the end
    with ThreadPoolExecutor(a.jobs) as pool:
        reports = list(pool.map(lambda mp: run_point(*mp, a.data, calls), points))
        versus_ours = list(pool.map(lambda mp, r: versus(*mp, r, a.data, calls), points, reports))
    for m in setups:
        rows = []
        for (owner, (part, target, _, method)), report, vs in zip(points, reports, versus_ours,
                                                                 strict=True):  # fmt: skip
            if owner is m:
                figures = (reference_row(target, report) if part == "resolution"
                           else row(method, target, report, m.policies.get(method)))  # fmt: skip
                rows.append({"part": part, "cpu": cpu(), **figures})
                if vs is not None:
                    rows[-1]["vs_ours"] = vs
        if a.retime:
            retime(m, rows, calls)
        (m.root / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
        (m.root / "results.md").write_text(markdown(m.name, rows, argv))
        plot(m.name, rows, m.root / "structured.png")
        print((m.root / "results.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
