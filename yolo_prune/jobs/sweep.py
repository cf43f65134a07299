"""mAP against sparsity: one pruning run per (method, ratio), a table, a plot and JSON.

:func:`run_sweep` is the library call behind ``yolo-prune sweep``. Every point is a full
:func:`~yolo_prune.jobs.prune.run_prune` in ``out/points/<method>/r<ratio>/``; a point whose
``report.json`` exists is finished and is read back, not redone, so a killed sweep resumes where
it stopped (a point whose ``config.yaml`` no longer matches the recipe is run again). After
every point ``sweep.json``, ``sweep.md`` and ``sweep.png`` are rewritten
(atomically) from the same list of rows, so the table and the plot always show the JSON. The
rows are this run's points and every other point finished in the folder with the same recipe,
so sweeps of other methods or ratios into one folder, one after another or at the same time,
add up instead of overwriting each other's summary.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from yolo_prune.engine.distributed import dist_info, synchronize
from yolo_prune.errors import ConfigError
from yolo_prune.jobs.prune import (
    PruneJobConfig,
    check_job,
    dense_model,
    merged_config,
    run_prune,
)
from yolo_prune.utils.io import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    """A grid of pruning runs sharing one dense model, data and recipe."""

    job: PruneJobConfig  # the template run (its method/ratio/out are replaced per point)
    ratios: tuple[float | None, ...]  # removal ratios to run (None: each variant's own)
    methods: tuple[str, ...]  # recipe variants or registered methods to run

    def __post_init__(self) -> None:
        if not self.ratios or not self.methods:
            raise ConfigError("a sweep needs at least one ratio and one method")
        for r in self.ratios:
            if r is not None and (not 0.0 <= r < 1.0 or math.isnan(r)):
                raise ConfigError(f"ratio {r} is outside [0, 1)")


def point_dir(out: Path, method: str, ratio: float | None) -> Path:
    return out / "points" / method / ("own" if ratio is None else f"r{ratio:g}")


def point_row(method: str, ratio: float | None, report: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of one finished point that the table, plot and JSON show."""
    p = report["pruned"]
    return {
        "method": method,
        "ratio": ratio if ratio is not None else report.get("ratio"),
        "sparsity": p.get("sparsity"),
        "AP": p.get("AP"),
        "AP50": p.get("AP50"),
        "top1": p.get("top1"),
        "nonzero_params": p.get("nonzero_params"),
        "gflops_nonzero": p.get("gflops_nonzero"),
        # FPS of the fastest form (the shrunk model where there is one) over the dense model's,
        # timed side by side in the point's run: absolute FPS of separate runs do not compare
        "speedup": _ratio((report.get("shrunk") or p).get("fps"), report["dense"].get("fps")),
        "minutes": report.get("minutes"),
        "report": str(Path(report.get("_dir", "")) / "report.json"),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def run_sweep(config: SweepConfig, *, on_point=None) -> dict[str, Any]:
    """Run every missing point, then write the summary; returns the summary dict.

    Under ``torchrun`` every rank runs the points (see :func:`run_prune`); rank 0 alone writes
    and reports, the others return ``{}``. Before each point the ranks wait for each other, so
    that they all find the same finished points and files.
    """
    job = config.job
    task = job.task()
    check_job(job.recipe, task, config.methods, ratios=len(config.ratios))
    main = dist_info(job.device).is_main  # under torchrun, rank 0 alone writes and reports
    out = job.out
    if main:
        out.mkdir(parents=True, exist_ok=True)
    synchronize()  # no rank reads the files below while rank 0 is writing them
    dense_path = out / "dense.json"
    dense = _read_json(dense_path)
    trained = out / "dense.weights"  # a classifier trained here once, shared by every point
    if job.weights is None and job.recipe.get("dense_epochs"):
        if not trained.is_file():
            dense = None
        job = replace(job, weights=trained) if trained.is_file() else job
    if dense is None:
        model = dense_model(job, task)
        if job.weights is None and job.recipe.get("dense_epochs"):
            job = replace(job, weights=trained)
            if main and not job.keep_checkpoints:  # dense.weights holds what the points need
                for name in ("last.pt", "final.weights"):
                    (out / "phases" / "dense" / name).unlink(missing_ok=True)
        dense = task.evaluate(model) if main else {}  # figures for the report only
        if main:
            atomic_write_text(dense_path, json.dumps(dense, indent=1) + "\n")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for method in config.methods:
        for ratio in config.ratios:
            synchronize()  # rank 0 has written the last point (and dense.weights) by now
            where = point_dir(out, method, ratio)
            recipe = {**job.recipe, "ratio": ratio, "method": method}
            report = _read_json(where / "report.json")
            if report is not None and _config_changed(where, recipe, method):
                logger.warning("%s: the recipe changed since this point ran; running it again",
                               where)  # fmt: skip
                report = None
            if report is None:
                logger.info("sweep point %s at %s", method, ratio or "its own ratio")
                report = run_prune(
                    replace(job, out=where, recipe=recipe, method=method, dense_metrics=dense)
                )
            else:
                logger.info("sweep point %s at %s: done before, read back", method, ratio)
            if not main:
                continue
            report["_dir"] = str(where)
            rows.append(point_row(method, ratio, report))
            summary = _summary(job, dense, rows + _other_points(out, job, rows))
            write_summary(out, summary)
            if on_point is not None:
                on_point(rows[-1])
    return summary


def _other_points(out: Path, job: PruneJobConfig, rows: Sequence[Mapping]) -> list[dict]:
    """Rows of the points finished in ``out`` outside this run's grid (another sweep into the
    same folder, before or at the same time), with this recipe; so the summary this run
    writes last does not drop them."""
    mine = {r["report"] for r in rows}
    found = []
    for path in sorted((out / "points").glob("*/*/report.json")):
        where = path.parent
        tag = where.name
        if str(path) in mine or not (tag == "own" or tag.startswith("r")):
            continue
        try:
            ratio = None if tag == "own" else float(tag[1:])
        except ValueError:
            continue
        method = where.parent.name
        recipe = {**job.recipe, "ratio": ratio, "method": method}
        report = _read_json(path)
        if report is None or _config_changed(where, recipe, method):
            continue
        report["_dir"] = str(where)
        found.append(point_row(method, ratio, report))
    return found


def _config_changed(where: Path, recipe: Mapping[str, Any], method: str) -> bool:
    """Whether the point's ``config.yaml`` differs from what the recipe would run now."""
    try:
        return (where / "config.yaml").read_text() != merged_config(recipe, method)
    except OSError:
        return True


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("%s is unreadable; the point is run again", path)
        return None


def _summary(job: PruneJobConfig, dense: Mapping[str, Any], rows: Sequence[Mapping]) -> dict:
    return {
        "cfg": str(job.cfg),
        "weights": str(job.weights),
        "val": str(job.val),
        "size": dense.get("size"),
        "metric": "top1" if "top1" in dense else "AP50",
        "dense": {k: dense.get(k) for k in ("AP", "AP50", "top1", "sparsity", "nonzero_params")},
        "points": [dict(r) for r in rows],
    }


def write_summary(out: Path, summary: Mapping[str, Any]) -> None:
    """``sweep.md`` and ``sweep.png`` from ``summary``, then ``sweep.json`` (all atomic)."""
    atomic_write_text(out / "sweep.md", format_table(summary))
    fig = sweep_figure(summary)
    with atomic_open(out / "sweep.png") as f:
        fig.savefig(f, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    atomic_write_text(out / "sweep.json", json.dumps(summary, indent=1) + "\n")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def format_table(summary: Mapping[str, Any]) -> str:
    """The markdown table: one row per point, the dense model first; detectors show AP and
    AP50, classifiers top-1."""
    d = summary["dense"]
    keys = ("top1",) if summary.get("metric") == "top1" else ("AP", "AP50")
    heads = {"top1": "top-1 %", "AP": "AP %", "AP50": "AP50 %"}
    lines = [
        f"# {_label(summary)} vs sparsity: {Path(summary['cfg']).stem}"
        + (f", input {summary['size']}" if summary.get("size") else ""),
        "",
        "| method | ratio | sparsity % | " + " | ".join(heads[k] for k in keys)
        + " | non-zero params | GFLOPs (non-zero) | speed vs dense | minutes |",
        "|---|---:|---:|" + "---:|" * len(keys) + "---:|---:|---:|---:|",
        f"| dense | 0 | {_pct(d.get('sparsity'))} | "
        + " | ".join(_pct(d.get(k)) for k in keys)
        + f" | {d.get('nonzero_params') or 0:,} | | 1.00x | |",
    ]  # fmt: skip
    for r in summary["points"]:
        lines.append(
            f"| {r['method']} | {_fmt(r['ratio'], 'g')} | {_pct(r['sparsity'])} | "
            + " | ".join(_pct(r.get(k)) for k in keys)
            + f" | {r['nonzero_params'] or 0:,} "
            f"| {_fmt(r['gflops_nonzero'], '.3g')} | {_fmt(r['speedup'], '.2f')}x "
            f"| {_fmt(r['minutes'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def _label(summary: Mapping[str, Any]) -> str:
    return "top-1" if summary.get("metric") == "top1" else "mAP"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def sweep_figure(summary: Mapping[str, Any]):
    """The main figure (AP50 or top-1, %) against measured sparsity (%): a line per method, the
    dense model dashed."""
    metric = summary.get("metric") or "AP50"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods: dict[str, list[Mapping[str, Any]]] = {}
    for r in summary["points"]:
        methods.setdefault(r["method"], []).append(r)
    for method, rows in methods.items():
        rows = sorted(rows, key=lambda r: r["sparsity"] or 0.0)
        xs = [100 * (r["sparsity"] or 0.0) for r in rows]
        ys = [100 * (r.get(metric) or 0.0) for r in rows]
        ax.plot(xs, ys, marker="o", label=method)
    dense = summary["dense"].get(metric)
    if dense is not None:
        ax.axhline(100 * dense, color="gray", linestyle="--", label="dense")
    name = "top-1" if metric == "top1" else metric
    ax.set_xlabel("sparsity of conv weights (%)")
    ax.set_ylabel(f"{name} (%)")
    ax.set_title(f"{Path(summary['cfg']).stem}: {name} vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
