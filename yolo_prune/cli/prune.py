"""``yolo-prune prune``: prune a detector or a classifier end to end, report dense vs pruned.

    yolo-prune prune --cfg cfg/yolov3-tiny.cfg --weights W --data TRAIN --val VAL \\
        --ratio 0.5 [--method admm] [--recipe cfg/recipes/yolov3-tiny.yaml] --out DIR
    yolo-prune prune --cfg cfg/lenet5.cfg --data ../shared/data/mnist --ratio 0.99 --out DIR

The task follows the cfg: a ``[yolo]`` layer makes a detector (COCO / YOLO-txt data, AP50),
anything else a classifier (MNIST or CIFAR-10, top-1). Without ``--weights`` a classifier
recipe's ``dense_epochs`` train the dense model first.

Without ``--recipe`` the recipe ``cfg/recipes/<cfg name>.yaml`` is used when there is one.
Flags override the recipe's keys; ``--set KEY=VALUE`` any other key (``--set train.lr=0.002``).
``--weights yolov4-tiny`` (a name, not a file) fetches the canonical weights through the
verified downloader. See :mod:`yolo_prune.jobs.prune` for the files written to ``DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yolo_prune.cli.common import add_latency_argument, add_progress_argument
from yolo_prune.engine.distributed import dist_info
from yolo_prune.errors import ConfigError, require_file

if TYPE_CHECKING:
    from yolo_prune.jobs.prune import PruneJobConfig


def add_common(p: argparse.ArgumentParser) -> None:
    """Arguments ``prune`` and ``sweep`` share."""
    p.add_argument("--cfg", type=Path, help="Darknet .cfg (default: the recipe's model)")
    p.add_argument("--weights", help="dense weights: a file, or a name to download (yolov4)")
    p.add_argument("--data", type=Path, help="training dataset folder (COCO JSON or YOLO txt)")
    p.add_argument("--val", type=Path, help="validation dataset folder (default: --data)")
    p.add_argument("--val-split", help="validation split (default: the first val* split)")
    p.add_argument("--recipe", type=Path, help="recipe YAML (default: cfg/recipes/<cfg>.yaml)")
    p.add_argument("--size", type=int, help="network input side (default: the recipe's)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, dotted (train.lr=0.002, methods.admm.epochs=2)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_latency_argument(p)
    p.add_argument(
        "--no-deploy",
        action="store_true",
        help="skip the deployable files (pruned.onnx, pruned-int8.onnx) and their figures",
    )
    p.add_argument(
        "--calib-images",
        type=int,
        default=64,
        help="training images that calibrate pruned-int8.onnx (default 64)",
    )
    p.add_argument("--max-val-images", type=int, help="evaluate on the first N images only")
    add_progress_argument(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run in --out from its phases' checkpoints (same flags)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from yolo_prune.prune.registry import METHODS

    p = subparsers.add_parser(
        "prune",
        help="prune a detector or classifier, fine-tune it, report dense vs pruned",
        description=(
            "Evaluate the dense model (a detector, or a classifier on MNIST / CIFAR-10), prune "
            "it (ADMM phase, hard prune, masked fine-tune for admm), evaluate again, and write "
            "pruned weights, a sparse file, the report and a per-layer chart to --out. "
            "Registered methods: " + ", ".join(sorted(METHODS))
        ),
    )
    add_common(p)
    p.add_argument("--ratio", type=float, help="global fraction of weights to remove")
    p.add_argument(
        "--flops",
        type=float,
        help="structured methods: instead of --ratio, the "
        "fraction of the dense FLOPs the shrunk model keeps (the ratio is searched)",
    )
    p.add_argument("--method", help="recipe variant or registered method (default: admm)")
    p.set_defaults(func=run)


def default_recipe(cfg: Path | None) -> Path | None:
    """``cfg/recipes/<cfg stem>.yaml`` beside the cfg's folder or under the working directory."""
    if cfg is None:
        return None
    for root in (cfg.resolve().parent.parent, Path.cwd()):
        candidate = root / "cfg" / "recipes" / f"{cfg.stem}.yaml"
        if candidate.is_file():
            return candidate
    return None


def recipe_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe with the flags applied (flags win)."""
    from yolo_prune.jobs.recipe import apply_overrides, normalise, read_recipe

    if args.cfg is not None:
        require_file(args.cfg, "cfg file")
    path = args.recipe or default_recipe(args.cfg)
    recipe = read_recipe(path) if path is not None else normalise({})
    sets = list(args.set)
    for flag, key in (("ratio", "ratio"), ("method", "method"), ("size", "size"),
                      ("flops", "flops")):  # fmt: skip
        value = getattr(args, flag, None)
        if value is not None:
            recipe[key] = value
    if sets:
        recipe = {**apply_overrides(recipe, sets), "_dir": recipe.get("_dir")}
    if recipe.get("_dir") is None:
        recipe.pop("_dir", None)
    recipe["_path"] = str(path) if path else None
    return recipe


def job_inputs(args: argparse.Namespace, recipe: dict[str, Any]) -> dict[str, Any]:
    """cfg, weights, data and val from the flags or the recipe, checked to exist."""
    from yolo_prune.hub import resolve_weights
    from yolo_prune.jobs.recipe import resolve_path

    cfg = args.cfg or resolve_path(recipe, recipe.get("model"))
    if cfg is None:
        raise ConfigError("no model: give --cfg or a recipe with 'model:'")
    require_file(cfg, "cfg file")
    weights = args.weights or recipe.get("weights")
    if weights is None and not recipe.get("dense_epochs"):
        raise ConfigError(
            "no dense weights: give --weights FILE (or a name such as yolov4-tiny), or a recipe "
            "with dense_epochs: N to train the dense model first"
        )
    if weights is not None:
        weights = resolve_weights(resolve_path(recipe, weights))
        require_file(weights, "weights file")
    data = args.data or resolve_path(recipe, recipe.get("data"))
    # A recipe's val goes with the recipe's data: a --data of the user's own is scored on its
    # own val* split unless --val says otherwise (as --help says), never on the recipe's images.
    val = args.val or args.data or resolve_path(recipe, recipe.get("val")) or data
    for what, folder in (("--data", data), ("--val", val)):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise ConfigError(f"{what} {folder}: no such dataset folder")
    if args.calib_images < 1:
        raise ConfigError(f"--calib-images {args.calib_images}; expected a positive integer")
    if args.max_val_images is not None and args.max_val_images < 1:
        raise ConfigError(f"--max-val-images {args.max_val_images}; expected a positive integer")
    as_path = lambda p: Path(p) if p is not None else None  # noqa: E731
    return {"cfg": Path(cfg), "weights": as_path(weights), "data": as_path(data),
            "val": as_path(val)}  # fmt: skip


def needs_ratio(recipe: dict[str, Any], method: str) -> bool:
    """Whether variant ``method`` still lacks a ratio: it takes one and its recipe entry gives
    none (Deep Compression takes none: its accuracy budget decides)."""
    import dataclasses

    from yolo_prune.jobs.recipe import variant_options
    from yolo_prune.prune.registry import method_spec

    name, options = variant_options(recipe, method)
    fields = {f.name for f in dataclasses.fields(method_spec(name).config)}
    return "ratio" in fields and options.get("ratio") is None and not options.get("ratios")


def job_config(args: argparse.Namespace, recipe: dict[str, Any], method: str) -> PruneJobConfig:
    """The prune job that ``args`` (the flags common to ``prune`` and ``sweep``) ask for."""
    from yolo_prune.jobs.prune import PruneJobConfig

    main = dist_info(args.device).is_main  # under torchrun, rank 0 alone prints
    return PruneJobConfig(
        **job_inputs(args, recipe),
        out=args.out,
        recipe=recipe,
        method=method,
        device=args.device,
        progress=not args.no_progress and main,
        latency=not args.no_latency,
        deploy=not args.no_deploy,
        calib_images=args.calib_images,
        val_split=args.val_split,
        max_val_images=args.max_val_images,
        resume=args.resume,
    )


def run(args: argparse.Namespace) -> int:
    from yolo_prune.jobs.prune import check_job, format_report, run_prune

    recipe = recipe_from_args(args)
    method = recipe.get("method") or "admm"
    if recipe.get("ratio") is None and recipe.get("flops") is None and needs_ratio(recipe, method):
        raise ConfigError("no ratio: give --ratio R (the fraction of weights to remove, e.g. 0.5)")
    if args.flops is not None and args.ratio is not None:
        raise ConfigError("give --ratio or --flops, not both (--flops searches the ratio)")
    if args.flops is not None and not 0 < args.flops < 1:
        raise ConfigError(f"--flops {args.flops}; expected a fraction of the dense FLOPs in (0, 1)")
    config = job_config(args, recipe, method)
    check_job(recipe, config.task(), [method])
    report = run_prune(config)
    if dist_info(args.device).is_main:  # under torchrun, rank 0 alone prints
        print(format_report(report), end="")
        print(f"outputs: {args.out}/ (report.md, report.json, pruned.weights, pruned.sparse, ...)")
    return 0
