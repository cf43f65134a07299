"""``yolo-prune sweep``: mAP against sparsity over ratios and methods, resumable.

    yolo-prune sweep --cfg cfg/yolov3-tiny.cfg --weights W --data TRAIN --val VAL \\
        --ratios 0.5,0.7,0.9 --methods admm,magnitude --out DIR

Writes ``DIR/sweep.json``, ``DIR/sweep.md`` (the table) and ``DIR/sweep.png`` (AP50 against
sparsity, a line per method), plus one full ``yolo-prune prune`` output folder per point under
``DIR/points/``. Run the same command again to resume: finished points are read back.
"""

from __future__ import annotations

import argparse

from yolo_prune.cli.prune import add_common, job_config, recipe_from_args
from yolo_prune.engine.distributed import dist_info
from yolo_prune.errors import ConfigError


def _floats(text: str) -> tuple[float | None, ...]:
    if text.strip() == "own":  # each variant at the ratio its recipe entry gives
        return (None,)
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers, e.g. 0.5,0.7,0.9") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="AP50 (top-1) vs sparsity over ratios and methods (table, plot, JSON; resumable)",
        description="Run yolo-prune prune for every method at every ratio; resumable.",
    )
    add_common(p)
    p.add_argument(
        "--ratios",
        type=_floats,
        default=(0.1, 0.3, 0.5, 0.7, 0.9),
        help="e.g. 0.5,0.9; 'own': each variant once, at its recipe entry's ratio",
    )
    p.add_argument(
        "--methods",
        type=_names,
        help="recipe variants or methods, or 'all' (every variant of the recipe; default: admm)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from yolo_prune.jobs.recipe import variant_options
    from yolo_prune.jobs.sweep import SweepConfig, format_table, run_sweep
    from yolo_prune.prune import build_config

    recipe = recipe_from_args(args)
    methods = args.methods or (recipe.get("method") or "admm",)
    if methods == ("all",):  # every variant of the recipe, in its order
        methods = tuple(recipe["methods"]) or ("admm",)
    for method in methods:  # a typo or an impossible point fails before the first point
        for ratio in args.ratios:
            build_config(*variant_options({**recipe, "ratio": ratio or recipe.get("ratio")},
                                          method))  # fmt: skip
    if not args.ratios:
        raise ConfigError("--ratios is empty; give e.g. 0.5,0.7,0.9")
    job = job_config(args, recipe, methods[0])
    main = dist_info(args.device).is_main  # under torchrun, rank 0 alone prints

    def show(row: dict) -> None:
        metric = "top1" if row.get("top1") is not None else "AP50"
        print(
            f"{row['method']} at {row['ratio']}: sparsity {100 * (row['sparsity'] or 0):.2f}%, "
            f"{metric} {100 * (row[metric] or 0):.2f}",
            flush=True,
        )

    summary = run_sweep(SweepConfig(job=job, ratios=args.ratios, methods=methods), on_point=show)
    if main:
        print(format_table(summary), end="")
        print(f"outputs: {args.out}/sweep.json, sweep.md, sweep.png")
    return 0
