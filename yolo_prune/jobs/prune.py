"""The main job: evaluate a dense detector, prune it, fine-tune it, evaluate and report.

:func:`run_prune` is the one library call behind ``yolo-prune prune``. The pruning method
(:mod:`yolo_prune.prune`) drives the schedule through two callbacks this module supplies:
``fit(phase, epochs, hooks)`` fine-tunes with :func:`~yolo_prune.detect.train.train_detector`
(the method's hooks add its penalty or hold its masks) and ``evaluate()`` returns val AP50.

Files written under ``out`` (each atomically; the reports last, so a report means a finished run)::

    config.yaml             the merged recipe that ran (re-runnable with --recipe)
    dense.json              the dense model's figures (reused by a resumed sweep)
    phases/<phase>/         each training phase's metrics.json, and its checkpoint (last.pt)
                            until the run has finished
    pruned.weights          Darknet weights of the pruned model, dense layout, zeros in place
    pruned.sparse           the same, compactly (yolo-prune eval/detect read it)
    pruned-shrunk.cfg/.weights   structured methods: the physically smaller model
    pruned.onnx             the model that ships (shrunk if channels went, else pruned), float
    pruned-int8.onnx        the same, static INT8 (QDQ), calibrated on the training images
                            (with the recipe's ``qat_epochs``: quantized from a copy fine-tuned
                            with the INT8 rounding in its forward pass)
    layer_sparsity.png      the pruned fraction of every layer
    report.json, report.md  dense vs pruned: AP, AP50, params, sparsity, GFLOPs, latency in
                            every installed runtime (side by side), deployable file sizes
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolo_prune.engine.distributed import dist_info
from yolo_prune.errors import ConfigError
from yolo_prune.jobs.recipe import (
    to_yaml,
    variant_distill,
    variant_labels,
    variant_options,
    variant_refit,
)
from yolo_prune.jobs.tasks import Task, TaskInputs, build_task
from yolo_prune.prune.masks import MaskHook, apply_masks_
from yolo_prune.prune.refit import is_filter_cut, refit_masked_
from yolo_prune.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneJobConfig:
    """One pruning run: what model, which data, which recipe variant, where to write."""

    cfg: Path  # Darknet .cfg of the dense model (a detector or a classifier)
    weights: Path | None  # its weights (.weights, .pt or sparse); None: the recipe's
    # `dense_epochs` of training (classifiers), else random init (tests)
    data: Path | None  # training dataset folder (COCO JSON or YOLO txt; MNIST or CIFAR-10);
    # None: a method that needs no data (one-shot, weight-based), no refit, nothing measured
    val: Path | None  # validation dataset folder (detection: AP before and after; None: none)
    out: Path  # output folder
    recipe: Mapping[str, Any]  # normalised recipe (see yolo_prune.jobs.recipe), overrides applied
    method: str  # the variant of recipe["methods"] (or a registered method) to run
    device: str = "cpu"  # torch device
    progress: bool = True  # tqdm bars while training and evaluating
    latency: bool = True  # time the forward pass (FPS) of the dense and pruned models
    val_split: str | None = None  # validation split (None: the first val* split)
    max_val_images: int | None = None  # evaluate on the first images only (smoke runs)
    dense_metrics: Mapping[str, Any] | None = None  # figures of the dense model, if known
    extra_train: Mapping[str, Any] = field(default_factory=dict)  # train overrides (tests)
    keep_checkpoints: bool = False  # keep phases/*/last.pt after a finished run (100s of MB)
    deploy: bool = True  # write pruned.onnx and pruned-int8.onnx, score and time the INT8 one
    calib_images: int = 64  # training images that calibrate the INT8 model
    resume: bool = False  # continue a killed run in `out` from its phases' checkpoints

    def task(self) -> Task:
        """The task of the cfg (detection or classification), with the recipe's settings."""
        inputs = TaskInputs(cfg=self.cfg, data=self.data, val=self.val, val_split=self.val_split,
                            device=self.device, progress=self.progress,
                            max_val_images=self.max_val_images)  # fmt: skip
        return build_task(inputs).with_settings(self.recipe.get("train") or {})


def phase_settings(recipe: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """``train`` settings of ``phase``: the recipe's ``train``, then its ``phases`` entry.

    A phase ``finetune-2`` or ``round-3`` also matches the entry ``finetune`` / ``round``;
    ``default`` applies to phases with no entry of their own (the recipe's phase names are
    checked against the methods' when it is read).
    """
    phases = recipe.get("phases") or {}
    base = phase.rstrip("0123456789").rstrip("-")
    own = phases.get(phase, phases.get(base, phases.get("default", {})))
    return {**(recipe.get("train") or {}), **own}


def merged_config(recipe: Mapping[str, Any], name: str) -> str:
    """The YAML of what runs for variant ``name``: the recipe with only that variant, its ratio
    and stages resolved (``config.yaml``; a sweep compares it to decide whether a finished point
    still holds)."""
    method, options = variant_options(recipe, name)
    distill = variant_distill(recipe, name)
    labels = variant_labels(recipe, name)
    refit = variant_refit(recipe, name)
    ran = {"method": method, **options, **({"distill": distill} if distill else {}),
           **({"labels": labels} if labels != 1 else {}),
           **({"refit": refit} if refit else {})}  # fmt: skip
    keep = {k: v for k, v in recipe.items() if not k.startswith("_")}
    return to_yaml({**keep, "method": name, "methods": {name: ran}})


def check_job(
    recipe: Mapping[str, Any], task: Task, methods: Sequence[str], *, ratios: int = 1
) -> None:
    """Refuse, before any work, what the job could only fail at later: ``train``/``phases``
    settings that are not the task's, a variant that spends other than the recipe's
    ``budget_epochs``, and a method without a ratio swept over ``ratios`` > 1 ratios (its points
    would all be the same run).

    Raises:
        ConfigError: one line naming the key or the variant.
    """
    from yolo_prune.prune import build_config

    task.check_settings(recipe.get("train") or {}, "train")
    for phase, values in (recipe.get("phases") or {}).items():
        task.check_settings({**(recipe.get("train") or {}), **values}, f"phases.{phase}")
    qat_epochs(recipe)
    budget = recipe.get("budget_epochs")
    for name in methods:
        method, options = variant_options({**recipe, "ratio": recipe.get("ratio") or 0.5}, name)
        config = build_config(method, options)
        if task.inputs.data is None and config.needs_data():
            raise ConfigError(
                f"no training data: give --data FOLDER ({name} trains or measures on images; "
                "without data run a one-shot method that reads the weights only, e.g. "
                "--method magnitude --set methods.magnitude.epochs=0, or channel with "
                "criterion l1, l2 or bn)"
            )

        if budget is not None and config.epochs_spent() != budget:
            raise ConfigError(
                f"methods.{name} spends {config.epochs_spent()} training epochs but the recipe's "
                f"budget_epochs is {budget}; make them equal or drop budget_epochs"
            )
        if ratios > 1 and not hasattr(config, "ratio"):
            raise ConfigError(
                f"method {name!r} ({method}) has no ratio (it decides how much to remove "
                f"itself), so {ratios} ratios would run the same point {ratios} times; sweep it "
                "with one ratio"
            )


def check_resumable(config: PruneJobConfig, recipe: Mapping[str, Any]) -> dict[str, Any] | None:
    """For ``--resume``: refuse an output folder that another recipe wrote; return the dense
    figures the killed run measured (None if it had not got that far).

    The run then repeats its deterministic steps and each phase continues from its checkpoint
    (``phases/<phase>/last.pt``: model, optimizer, the pruner's hook state, RNG and data
    position), so it ends with the weights an uninterrupted run would have.
    """
    written = config.out / "config.yaml"
    if written.is_file() and written.read_text() != merged_config(recipe, config.method):
        raise ConfigError(
            f"--resume: {written} was written by another recipe or method than this command's; "
            "resume with the same flags, or give a new --out"
        )
    if (config.out / "report.json").is_file():
        logger.warning("%s: this run had finished; running it again", config.out)
    dense = config.out / "dense.json"
    return json.loads(dense.read_text()) if dense.is_file() else None


def dense_model(config: PruneJobConfig, task: Task) -> nn.Module:
    """The dense model: loaded from ``config.weights``; without weights, trained for the
    recipe's ``dense_epochs`` (saved as ``out/dense.weights``; with ``config.resume``
    continued from its checkpoint) or, with none, freshly initialised (tests)."""
    recipe = config.recipe
    model = task.load_dense(config.weights, size=recipe.get("size"))
    epochs = recipe.get("dense_epochs") or 0
    if config.weights is None and epochs:
        if config.data is None:
            raise ConfigError("no dense weights and no data to train them on: give --weights "
                              "FILE, or --data FOLDER to train the dense model first")  # fmt: skip
        logger.info("training the dense model: %d epochs", epochs)
        task.fit(model, "dense", epochs, [], settings=phase_settings(recipe, "dense"),
                 teacher=None, distill=0.0, out=config.out / "phases" / "dense",
                 resume=config.resume)  # fmt: skip
        if dist_info(config.device).is_main:  # under torchrun, rank 0 alone writes
            model.save_weights(config.out / "dense.weights")
    return model


@dataclass
class _Cut:
    """What the job did to the model at the cut."""

    refitted: bool = False  # the cut was refitted by least squares
    at: str | None = None  # when, in the report's words
    images: int = 0  # on how many calibration images


def make_fit(
    config: PruneJobConfig,
    task: Task,
    model: nn.Module,
    *,
    recipe: Mapping[str, Any],
    teacher: nn.Module | None,
    distill: float,
    labels: float,
    refit: int,
    dense: nn.Module | None,
    phases: list[dict[str, Any]],
    cut: _Cut,
) -> Callable[[str, int, Sequence[Any]], None]:
    """The ``fit(phase, epochs, hooks)`` callback the pruner drives: the task's training with
    the pruner's hooks. Before the first phase with hard masks, with ``refit`` images, the cut is
    refitted to the dense model by least squares, once (:func:`refit_cut_`; refitting after the
    fine-tuning would undo it), and channels cut whole are folded (training and eval mode must
    see the same network)."""

    def fit(phase: str, epochs: int, hooks: Sequence[Any]) -> None:
        if epochs < 1:
            return
        t0 = time.perf_counter()
        masked = [h.masks for h in hooks if isinstance(h, MaskHook)]
        if masked:
            if refit and not cut.refitted and dense is not None:
                images = task.calibration(model, refit)
                cut.refitted = refit_cut_(model, dense, merged_masks(masked), images)
                if cut.refitted:
                    cut.at, cut.images = "the cut, before fine-tuning", images.shape[0]
                    logger.info("the cut refitted on %d images before %s", images.shape[0], phase)
            fold = getattr(model, "fold_zero_channels_", None)  # a no-op after a structured refit
            folded = fold() if fold is not None else set()
            if folded:
                logger.info("%d pruned channel groups folded before %s", len(folded), phase)
        settings = {**phase_settings(recipe, phase), **config.extra_train}
        last = task.fit(model, phase, epochs, hooks, settings=settings, teacher=teacher,
                        distill=distill, labels=labels, out=config.out / "phases" / phase,
                        resume=config.resume)  # fmt: skip
        for masks in masked:  # an EMA of masked weights keeps the zeros; re-assert them anyway
            apply_masks_(model, masks)
        phases.append(
            {"phase": phase, "epochs": epochs, "minutes": (time.perf_counter() - t0) / 60, **last}
        )

    return fit


def run_prune(config: PruneJobConfig) -> dict[str, Any]:
    """Evaluate, prune, fine-tune, evaluate, write the outputs; returns the report.

    Under ``torchrun`` every rank trains and prunes (the same decisions: the same weights, the
    same full data for every figure a method decides on); rank 0 alone evaluates for the
    report, writes and times, and the other ranks return ``{}`` once the pruning is done.

    Raises:
        ConfigError, DataError, WeightsError, PruneError: bad options, data, weights or a
            pruning request the model cannot satisfy (raised before any training).
    """
    from yolo_prune.prune import build_pruner

    started = time.perf_counter()
    task = config.task()
    recipe = config.recipe
    check_job(recipe, task, [config.method])
    if recipe.get("flops") is not None and recipe.get("ratio") is None:
        recipe = {**recipe, "ratio": 0.3}  # provisional: the FLOPs target sets the ratio
    method, options = variant_options(recipe, config.method)
    distill = variant_distill(recipe, config.method)
    labels = variant_labels(recipe, config.method)
    refit = variant_refit(recipe, config.method) if config.data is not None else 0
    pruner = build_pruner(method, options)  # validates the options before any work
    place = dist_info(config.device)
    main = place.is_main  # under torchrun, rank 0 alone writes and reports
    if qat_epochs(recipe) and config.deploy and place.world_size > 1:
        raise ConfigError(
            "qat_epochs trains the INT8 copy after the other ranks have finished; run the job "
            "without torchrun, or drop qat_epochs (or pass --no-deploy)"
        )
    out = config.out
    dense_metrics = config.dense_metrics
    if config.resume:
        dense_metrics = check_resumable(config, recipe) or dense_metrics
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", merged_config(recipe, config.method))
    t_dense = time.perf_counter()
    model = dense_model(config, task)
    trained = None
    if config.weights is None and recipe.get("dense_epochs"):
        trained = {
            "epochs": recipe["dense_epochs"],
            "minutes": (time.perf_counter() - t_dense) / 60,
        }

    if dense_metrics is not None:
        dense = dict(dense_metrics)
    else:
        logger.info("evaluating the dense model")
        dense = task.evaluate(model) if main else {}  # figures for the report only
    if main:
        atomic_write_text(out / "dense.json", json.dumps(dense, indent=1) + "\n")

    # One frozen copy of the dense model: the teacher (never trained), the timing baseline, the
    # smaller-input reference and the refit's target.
    frozen = copy.deepcopy(model) if config.latency or distill or refit or config.val else None

    logger.info("pruning with %s (%s) at ratio %s", config.method, method, options.get("ratio"))
    importance = task.importance()  # measured only if the method ranks channels by "fisher"
    flops = None
    if recipe.get("flops") is not None:  # aim at a FLOPs target: search the ratio first
        ratio, flops = ratio_for_flops(pruner, model, float(recipe["flops"]), importance)
        recipe = {**recipe, "ratio": ratio}
        method, options = variant_options(recipe, config.method)
        pruner = build_pruner(method, options)
        if main:
            atomic_write_text(out / "config.yaml", merged_config(recipe, config.method))
        logger.info("ratio %.4f gives %.4f of the dense FLOPs (target %s)", ratio, flops,
                    recipe["flops"])  # fmt: skip
    phases: list[dict[str, Any]] = []
    cut = _Cut()
    teacher = frozen if distill else None
    fit = make_fit(config, task, model, recipe=recipe, teacher=teacher, distill=distill,
                   labels=labels, refit=refit, dense=frozen, phases=phases, cut=cut)  # fmt: skip
    score = (lambda: task.score(model)) if config.val is not None else None
    result = pruner.run(model, fit=fit, evaluate=score, importance=importance)
    if not main:  # the rest only reports: evaluations, files, timing
        return {}
    if refit and not phases and not is_filter_cut(result.masks):
        # an unstructured one-shot cut, never trained: refit it now (a structured one is refitted
        # in its shrunk form below; never after training, whose batch norms no longer expect the
        # dense outputs the refit aims at)
        images = task.calibration(model, refit)
        cut.refitted = refit_cut_(model, frozen, result.masks, images)
        if cut.refitted:
            cut.at, cut.images = "the cut, with no fine-tuning after it", images.shape[0]
    fold = getattr(model, "fold_zero_channels_", None)
    if fold is not None:  # a one-shot cut never reached a masked phase's fold (make_fit): the
        fold()  # pruned model, as evaluated and saved, computes what its shrunk form computes
    model.eval()
    pruned = task.evaluate(model)

    files = save_pruned(model, out, meta={"method": config.method, "ratio": options.get("ratio")})
    calibration = None
    if refit and not cut.refitted:  # a one-shot cut: refit the shrunk model at the end
        calibration = task.calibration(model, refit)
    shrunk = shrink_pruned(model, out, refit_to=frozen, calibration=calibration)
    if shrunk is not None:
        shrunk_model, shrunk_files = shrunk
        files.update(shrunk_files)
        shrunk_metrics = task.evaluate(shrunk_model)
    else:
        shrunk_model = shrunk_metrics = None
    # what running the dense model at a smaller input gives for the same FLOPs: the first thing
    # to compare a structured cut with
    smaller = smaller_metrics = None
    if shrunk_metrics is not None and config.val is not None and frozen is not None:
        smaller = dense_at_smaller_input(frozen, shrunk_metrics.get("gflops"))
        smaller_metrics = task.evaluate(smaller) if smaller is not None else None
    int8_model = int8_metrics = None
    if config.deploy and task.kind == "detection":  # the ONNX wrappers run detectors only
        shipped = shrunk_model if shrunk_model is not None else model
        source = quant_aware_twin(shipped, config, task, recipe, teacher=teacher,
                                  distill=distill, labels=labels, phases=phases)  # fmt: skip
        int8_path, deploy_files = write_deployables(shipped, out, config, task, int8_source=source)
        files.update(deploy_files)
        if int8_path is not None:
            from yolo_prune.runtime import load_onnx_model

            int8_model = load_onnx_model(int8_path)
            int8_metrics = task.evaluate(int8_model)
    if config.latency and frozen is not None:
        timed = {"dense": frozen, "pruned": model, "shrunk": shrunk_model, "int8": int8_model,
                 "smaller_input": smaller}  # fmt: skip
        speeds = time_side_by_side({k: v for k, v in timed.items() if v is not None}, config)
        columns = (("dense", dense), ("pruned", pruned), ("shrunk", shrunk_metrics),
                   ("int8", int8_metrics), ("smaller_input", smaller_metrics))  # fmt: skip
        for name, metrics in columns:
            if metrics is not None and name in speeds:
                metrics.update(speeds[name])
    chart = out / "layer_sparsity.png"
    title = f"{config.method}, ratio {options.get('ratio')}"
    plot_layer_sparsity(model, result.masks, chart, title=title)
    refitted = cut.refitted or (shrunk is not None and calibration is not None)

    report = {
        "cfg": str(config.cfg),
        "task": task.kind,
        "metric": task.metric,
        "weights": str(config.weights) if config.weights else None,
        "data": str(config.data),
        "val": str(config.val),
        "method": config.method,
        "registered_method": method,
        "options": json.loads(json.dumps(options, default=str)),
        "ratio": options.get("ratio"),
        "flops_target": recipe.get("flops"),
        "flops_planned": flops,
        "target_sparsity": result.sparsity,
        "refit_images": (cut.images if cut.refitted else int(calibration.shape[0]))
        if refitted
        else 0,
        "refit_at": (cut.at if cut.refitted else "the end") if refitted else None,
        "size": list(model.input_shape[1:]),
        "dense": _figures(dense, config.weights or out / "dense.weights"),
        "pruned": _figures(pruned, out / "pruned.weights"),
        "shrunk": _figures(shrunk_metrics, out / "pruned-shrunk.weights")
        if shrunk_metrics
        else None,
        "int8": _figures(int8_metrics, out / "pruned-int8.onnx") if int8_metrics else None,
        "qat_epochs": qat_epochs(recipe) if int8_metrics else 0,
        "smaller_input": {**_figures(smaller_metrics, None), "input": smaller.input_shape[1]}
        if smaller_metrics
        else None,
        "files": files,
        "dense_weights_bytes": _darknet_bytes(frozen) if frozen is not None else None,
        "dense_training": trained,
        "measured": config.val is not None,  # False: no data, accuracy not measured
        "phases": phases,
        "history": json.loads(json.dumps(result.history, default=float)),
        "admm": admm_summary(result.history),
        "layers": layer_sparsity(model, result.masks),
        "caps_bind": binding_caps(
            result.masks, result.info.get("caps"), round_to=int(result.info.get("round_to", 1))
        ),
        "blocks_removed": removed_blocks(model),
        "minutes": (time.perf_counter() - started) / 60,
    }
    atomic_write_text(out / "report.md", format_report(report))
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    if not config.keep_checkpoints:  # the run is complete: the phases' files are dead weight
        for phase in (out / "phases").glob("*"):
            for name in ("last.pt", "final.weights"):
                (phase / name).unlink(missing_ok=True)
    return report


def merged_masks(mask_sets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One mask set from several hooks' (a weight in two sets is kept only if both keep it)."""
    merged: dict[str, torch.Tensor] = {}
    for masks in mask_sets:
        for name, mask in masks.items():
            merged[name] = mask.bool() & merged[name] if name in merged else mask.bool()
    return merged


def refit_cut_(
    model: nn.Module, dense: nn.Module, masks: Mapping[str, torch.Tensor], images: torch.Tensor
) -> bool:
    """Refit a hard cut to ``dense`` by least squares on ``images``, in place; False where
    there was nothing to refit.

    A cut of whole filters is refitted in the model's shrunk form (``refit_pruned_``, Darknet
    models); any other cut keeps its masks and has its kept weights refitted layer by layer
    (:func:`~yolo_prune.prune.refit.refit_masked_`), on any model."""
    if is_filter_cut(masks):
        refit_now = getattr(model, "refit_pruned_", None)
        return bool(refit_now is not None and refit_now(dense, images))
    return bool(refit_masked_(model, dense, masks, images))


def removed_blocks(model: nn.Module) -> list[str] | None:
    """The residual blocks the pruning removed whole, as layer ranges ``"first-shortcut"``
    (None for a model without removable blocks)."""
    blocks = getattr(model, "residual_blocks", None)
    dropped = getattr(model, "dropped_blocks", None)
    if blocks is None or dropped is None or not blocks():
        return None
    return [f"{b.layers[0]}-{b.shortcut}" for b in dropped()]


def shrunk_gflops(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> float:
    """GFLOPs of ``model`` shrunk without the channel groups and residual blocks that ``masks``
    zero wholly (a Darknet model; its dense GFLOPs when nothing goes whole)."""
    from yolo_prune.darknet.surgery import shrink_zeroed

    probe = copy.deepcopy(model)
    apply_masks_(probe, masks)
    small = shrink_zeroed(probe, inplace=True) or probe
    return small.gflops()


def ratio_for_flops(
    pruner: Any, model: nn.Module, target: float, importance: Any, *, tolerance: float = 0.005
) -> tuple[float, float]:
    """The ratio at which ``pruner`` leaves a shrunk model with ``target`` times the dense
    FLOPs (bisection on its :meth:`plan`, the cut it would make on the model as it is), and
    the FLOPs fraction reached. Data-driven rankings are measured once and reused.

    Raises:
        ConfigError: the method removes no whole channels, or no ratio comes within 2%.
    """
    from yolo_prune.errors import PruneError

    plan = getattr(pruner, "plan", None)
    if plan is None or not hasattr(model, "zero_channel_groups"):
        raise ConfigError("--flops needs a structured method that removes whole channels "
                          "(admm-filter, channel, torch-pruning) on a Darknet model")  # fmt: skip
    if not 0 < target < 1:
        raise ConfigError(f"--flops {target}; expected a fraction of the dense FLOPs in (0, 1)")
    dense = shrunk_gflops(model, {})
    memo: dict[tuple[str, ...], Any] = {}

    def measured_once(net: nn.Module, names: Sequence[str]) -> Any:
        key = tuple(names)
        if key not in memo:
            memo[key] = importance(net, names)
        return memo[key]

    lo, hi = 0.0, 0.95
    best: tuple[float, float] | None = None  # (ratio, flops fraction)
    while hi - lo > 1e-3:  # finer ratios change no FLOPs figure that 2% could tell apart
        ratio = (lo + hi) / 2
        try:
            fraction = shrunk_gflops(model, plan(model, ratio, importance=measured_once)) / dense
        except PruneError:  # the caps cannot remove that many channels
            hi = ratio
            continue
        if best is None or abs(fraction - target) < abs(best[1] - target):
            best = (ratio, fraction)
        if abs(fraction - target) <= tolerance:
            break
        lo, hi = (ratio, hi) if fraction > target else (lo, ratio)
    if best is None or abs(best[1] - target) > 0.02:
        got = f"closest {best[1]:.3f} at ratio {best[0]:.3f}" if best else "no ratio is allowed"
        raise ConfigError(f"--flops {target}: no ratio of this method reaches it within 2% "
                          f"({got}); relax the policy's caps, let channels fill in between whole "
                          "blocks (depth: true, not only), or aim elsewhere")  # fmt: skip
    return round(best[0], 4), best[1]


def admm_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """How far ADMM had brought W to Z when the hard prune came: the last Z-step's relative
    residual ``||W - Z|| / ||W||``, rho, and each variable's own relative residual (None for
    methods without ADMM). Near 0 the cut changed little; near 1 it was a blind one-shot cut."""
    steps = [h for h in history if "relative_residual" in h]
    if not steps:
        return None
    last = steps[-1]
    return {
        "final_relative_residual": float(last["relative_residual"]),
        "final_rho": float(last["rho"]) if last.get("rho") is not None else None,
        "z_steps": len(steps),
        "layers": {n: float(r) for n, r in (last.get("layers_relative") or {}).items()},
        "layers_whole": list(last.get("layers_whole") or []),
    }


SMALLER_INPUT_SLACK = 1.02  # a smaller input may cost 2% more GFLOPs than it is held to


def smaller_side(
    side: int, stride: int, budget: float, gflops_at: Callable[[int], float]
) -> int | None:
    """The largest input side under ``side``, a multiple of ``stride``, at which a model costs
    at most ``budget`` GFLOPs (:data:`SMALLER_INPUT_SLACK` over allowed; ``gflops_at(side)``:
    its GFLOPs there), or None."""
    limit = budget * SMALLER_INPUT_SLACK
    return next((s for s in range(side - stride, 0, -stride) if gflops_at(s) <= limit), None)


def dense_at_smaller_input(dense: nn.Module, gflops: float | None) -> nn.Module | None:
    """``dense`` at the largest smaller square input that costs at most ``gflops``
    (:func:`smaller_side`); None for a model that cannot run at another input (``at_size``: a
    Darknet detector can) or when no smaller input is that cheap."""
    from yolo_prune.darknet.graph import build_graph

    at_size = getattr(dense, "at_size", None)
    if at_size is None or not gflops or not getattr(dense, "is_detector", False):
        return None
    _, height, width = dense.input_shape
    side = smaller_side(min(height, width), dense.graph.max_stride, gflops,
                        lambda s: build_graph(dense.sections, size=s).bflops)  # fmt: skip
    return None if side is None else at_size(side).eval()


def time_side_by_side(
    models: Mapping[str, nn.Module], config: PruneJobConfig
) -> dict[str, dict[str, Any]]:
    """Batch-1 latency of each model in every installed runtime, timed in alternating rounds.

    Returns ``{name: {"latency_ms_by_runtime": {runtime: ms or why not}, "latency_ms", "fps"}}``
    where ``latency_ms``/``fps`` are the fastest runtime's (on a GPU: torch's alone).
    """
    from yolo_prune.detect import prepare_for_inference
    from yolo_prune.eval.latency import compare_latency

    if torch.device(config.device).type != "cpu":
        ready = {k: prepare_for_inference(v).to(config.device) for k, v in models.items()
                 if getattr(v, "runtime_name", None) is None}  # fmt: skip
        results = compare_latency(ready, {k: v.input_shape for k, v in ready.items()},
                                  device=config.device)  # fmt: skip
        return {k: {"fps": r.fps, "latency_ms": r.latency_ms,
                    "latency_ms_by_runtime": {"torch": r.latency_ms}}
                for k, r in results.items()}  # fmt: skip
    from yolo_prune.runtime import time_runtimes

    out = {}
    for name, by_runtime in time_runtimes(models).items():
        ms = {k: v for k, v in by_runtime.items() if isinstance(v, float)}
        best = min(ms.values()) if ms else None
        out[name] = {"latency_ms_by_runtime": by_runtime, "latency_ms": best,
                     "fps": 1000.0 / best if best else None}  # fmt: skip
    return out


def qat_epochs(recipe: Mapping[str, Any]) -> int:
    """The recipe's ``qat_epochs``: quantization-aware fine-tuning before the INT8 export."""
    value = recipe.get("qat_epochs") or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"qat_epochs={value!r}; expected a whole number of epochs >= 0")
    return value


def quant_aware_twin(
    shipped: nn.Module,
    config: PruneJobConfig,
    task: Task,
    recipe: Mapping[str, Any],
    *,
    teacher: nn.Module | None,
    distill: float,
    labels: float,
    phases: list[dict[str, Any]],
) -> nn.Module:
    """What ``pruned-int8.onnx`` is quantized from: ``shipped`` itself, or, with the recipe's
    ``qat_epochs`` and training data, a copy of it fine-tuned that many epochs with the INT8
    rounding in its forward pass (:mod:`yolo_prune.export.qat`; phase ``qat``, the variant's
    teacher and labels). ``shipped`` and its float files are left as they are."""
    epochs = qat_epochs(recipe)
    if not epochs or config.data is None or getattr(shipped, "sources", None) is None:
        return shipped
    from yolo_prune.export.qat import quant_aware

    t0 = time.perf_counter()
    twin = copy.deepcopy(shipped)
    settings = {**phase_settings(recipe, "qat"), **config.extra_train}
    with quant_aware(twin, task.calibration(twin, config.calib_images)) as hook:
        last = task.fit(twin, "qat", epochs, [hook], settings=settings, teacher=teacher,
                        distill=distill, labels=labels, out=config.out / "phases" / "qat",
                        resume=config.resume)  # fmt: skip
    twin.eval()
    phases.append(
        {"phase": "qat", "epochs": epochs, "minutes": (time.perf_counter() - t0) / 60, **last}
    )
    return twin


def write_deployables(
    model: nn.Module,
    out: Path,
    config: PruneJobConfig,
    task: Task,
    *,
    int8_source: nn.Module | None = None,
) -> tuple[Path | None, dict[str, int]]:
    """``pruned.onnx`` (float) and, with training data to calibrate it on, ``pruned-int8.onnx``
    (static INT8, QDQ, calibrated on the first ``config.calib_images`` training images;
    quantized from ``int8_source``, by default ``model``); returns the INT8 path (None without
    data) and the sizes of the files and of ``pruned.sparse`` compressed with zlib (what a
    download would weigh)."""
    import zlib

    from yolo_prune.export.onnx import export_onnx
    from yolo_prune.export.quantize import quantize_onnx_int8

    onnx_path, int8_path = out / "pruned.onnx", out / "pruned-int8.onnx"
    export_onnx(model, onnx_path, input_shape=model.input_shape)
    sizes = {"pruned.onnx": onnx_path.stat().st_size}
    if config.data is not None:
        source = int8_source if int8_source is not None else model
        src_path = onnx_path
        batches = task.deploy_calibration(source, config.calib_images)
        with tempfile.TemporaryDirectory(prefix="yolo_prune_qat_") as tmp:
            if source is not model:
                src_path = Path(tmp) / "qat.onnx"
                export_onnx(source, src_path, input_shape=source.input_shape)
            quantize_onnx_int8(src_path, int8_path, calibration=batches)
        sizes["pruned-int8.onnx"] = int8_path.stat().st_size
    sizes["pruned.sparse (zlib)"] = len(zlib.compress((out / "pruned.sparse").read_bytes(), 9))
    return (int8_path if config.data is not None else None), sizes


def _darknet_bytes(model: nn.Module) -> int:
    """Size of ``model`` as a Darknet ``.weights`` file (the dense baseline of the ratios)."""
    import io

    from yolo_prune.darknet.weights import write_darknet_weights

    buffer = io.BytesIO()
    write_darknet_weights(model, buffer)
    return buffer.tell()


_FIGURES = (
    "AP", "AP50", "AP75", "params", "nonzero_params", "weights", "nonzero_weights", "sparsity",
    "gflops", "gflops_nonzero", "fps", "latency_ms", "latency_ms_by_runtime", "images", "device",
    "top1",
)  # fmt: skip


def _figures(metrics: Mapping[str, Any] | None, weights: Path | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    out = {k: metrics.get(k) for k in _FIGURES}
    out["weights_bytes"] = weights.stat().st_size if weights and weights.is_file() else None
    return out


def save_pruned(model: nn.Module, out: Path, *, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``pruned.weights`` (Darknet, dense layout) and ``pruned.sparse`` (compact, with cfg)."""
    from yolo_prune.prune.sparse import save_sparse

    weights = out / "pruned.weights"
    model.save_weights(weights)
    stats = save_sparse(
        out / "pruned.sparse", model, meta={**meta, "cfg": model.cfg_text(), "format": "darknet"}
    )
    return {
        "pruned.weights": weights.stat().st_size,
        "pruned.sparse": stats["bytes"],
    }


def shrink_pruned(
    model: nn.Module,
    out: Path,
    *,
    refit_to: nn.Module | None = None,
    calibration: torch.Tensor | None = None,
) -> tuple[nn.Module, dict[str, int]] | None:
    """The physically smaller model, if whole channel groups or residual blocks are zero;
    exported as cfg+weights.

    With ``calibration`` images, the shrunk model is then refitted by least squares to
    ``refit_to`` (the dense model), layer by layer (:func:`yolo_prune.darknet.reconstruct`).
    """
    if getattr(model, "zero_channel_groups", None) is None:  # not a Darknet model
        return None
    from yolo_prune.darknet.surgery import shrink_zeroed
    from yolo_prune.export.darknet import export_darknet

    if calibration is not None and refit_to is None:
        raise ConfigError("a refit needs the dense model to refit to")
    small = shrink_zeroed(model, refit_to=refit_to, calibration=calibration)
    if small is None:
        return None
    cfg, weights = out / "pruned-shrunk.cfg", out / "pruned-shrunk.weights"
    export_darknet(small, cfg, weights)
    logger.info("shrunk model: %s (%d of %d layers)", cfg, len(small.layers), len(model.layers))
    sizes = {"pruned-shrunk.cfg": cfg.stat().st_size}
    sizes["pruned-shrunk.weights"] = weights.stat().st_size
    return small, sizes


def layer_sparsity(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Per pruned target: its weights, and the fraction that the masks remove."""
    params = dict(model.named_parameters())
    rows = []
    for name, mask in masks.items():
        rows.append(
            {
                "name": name,
                "weights": int(mask.numel()),
                "pruned": 1.0 - int(mask.sum()) / mask.numel(),
                "zero_after": 1.0 - int(torch.count_nonzero(params[name])) / mask.numel(),
            }
        )
    return rows


def binding_caps(
    masks: Mapping[str, torch.Tensor], caps: Mapping[str, float] | None, *, round_to: int = 1
) -> list[dict[str, Any]] | None:
    """The layers where the conservative policy's cap held the cut back, with the cap and the
    fraction pruned; None without caps. A cap holds a layer back when one more unit of the cut
    would pass it but not the layer's own size: one weight, or for a structured cut one run of
    ``round_to`` filters (the multiples its layers keep: a 32-filter layer capped at 70% stops
    at 16 pruned with ``round_to`` 8, as 24 would pass the 22 allowed; an 8-filter layer cannot
    lose a run of 8 with or without a cap)."""
    if not caps:
        return None
    rows = []
    for name, cap in caps.items():
        mask = masks.get(name)
        if mask is None or cap >= 1.0:
            continue
        pruned = 1.0 - int(mask.sum()) / mask.numel()
        filters = mask.reshape(mask.shape[0], -1)
        whole = bool((filters.all(1) | ~filters.any(1)).all())
        # counted as the projections count (yolo_prune.prune.projections): whole filters, at
        # most floor(cap * filters) and never all of them; else weights, floor(cap * weights)
        n, unit = (mask.shape[0], round_to) if whole else (mask.numel(), 1)
        removed = n - (int(filters.any(1).sum()) if whole else int(mask.sum()))
        room = n - 1 if whole else n  # what the cut could take without a cap
        if removed + unit > math.floor(cap * n) and removed + unit <= room:
            rows.append({"name": name, "cap": float(cap), "pruned": pruned})
    return rows


def plot_layer_sparsity(
    model: nn.Module, masks: Mapping[str, torch.Tensor], path: Path, *, title: str
) -> None:
    """A bar per pruned layer (its pruned fraction) over a bar of its size, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from yolo_prune.utils.io import atomic_open

    rows = layer_sparsity(model, masks)
    labels = [r["name"].rsplit(".", 2)[0].replace("layers.", "") for r in rows]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(6, 0.3 * len(rows) + 2), 5), sharex=True)
    ax.bar(range(len(rows)), [100 * r["pruned"] for r in rows], color="tab:red")
    ax.set_ylabel("pruned, %")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax2.bar(range(len(rows)), [r["weights"] / 1e6 for r in rows], color="tab:gray")
    ax2.set_ylabel("weights, M")
    ax2.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    ax2.set_xlabel("layer (cfg index)")
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v: float | int | None, fmt: str = ",") -> str:
    return "-" if v is None else format(v, fmt)


_ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("top-1 (%)", "top1", _pct),
    ("AP (COCO, %)", "AP", _pct),
    ("AP50 (%)", "AP50", _pct),
    ("AP75 (%)", "AP75", _pct),
    ("parameters, total", "params", _num),
    ("parameters, non-zero", "nonzero_params", _num),
    ("conv weights sparsity (%)", "sparsity", _pct),
    ("GFLOPs (dense kernels)", "gflops", lambda v: _num(v, ".3f")),
    ("GFLOPs (non-zero weights)", "gflops_nonzero", lambda v: _num(v, ".3f")),
    ("FPS (batch 1, fastest runtime)", "fps", lambda v: _num(v, ".1f")),
    ("weights file (bytes)", "weights_bytes", _num),
]


def _ms(figures: Mapping[str, Any], runtime: str) -> str:
    v = (figures.get("latency_ms_by_runtime") or {}).get(runtime)
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else "n/a")


def format_report(report: Mapping[str, Any]) -> str:
    """``report.md``: the dense vs pruned table and the run's settings."""
    cols = [("dense", report["dense"]), ("pruned", report["pruned"])]
    if report.get("shrunk"):
        refit = report.get("refit_images") if report.get("refit_at") == "the end" else 0
        label = f"pruned, shrunk, refit on {refit} images" if refit else "pruned, shrunk"
        cols.append((label, report["shrunk"]))
    if report.get("int8"):
        qat = report.get("qat_epochs") or 0
        how = f", {qat} epochs quantization-aware" if qat else ""
        cols.append((f"shipped, INT8 (pruned-int8.onnx{how})", report["int8"]))
    smaller = report.get("smaller_input")
    if smaller:
        cols.append((f"dense at {smaller['input']}x{smaller['input']}, not pruned", smaller))
    lines = [
        f"# {Path(report['cfg']).stem}: {report['method']} at ratio {report['ratio']}",
        "",
        "| | " + " | ".join(c for c, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    skip = {"AP", "AP50", "AP75"} if report.get("metric") == "top1" else {"top1"}
    for label, key, fmt in (row for row in _ROWS if row[1] not in skip):
        lines.append(f"| {label} | " + " | ".join(fmt(f.get(key)) for _, f in cols) + " |")
    for runtime in ("torch", "onnxruntime", "opencv"):
        lines.append(f"| latency (ms, batch 1), {runtime} | "
                     + " | ".join(_ms(f, runtime) for _, f in cols) + " |")  # fmt: skip
    files = report["files"]
    dense_bytes = report.get("dense_weights_bytes")
    shipped = [k for k in ("pruned-shrunk.weights", "pruned.onnx", "pruned-int8.onnx",
                           "pruned.sparse", "pruned.sparse (zlib)") if k in files]  # fmt: skip
    if dense_bytes and shipped:
        lines += ["", "| file | bytes | smaller than the dense .weights |", "|---|---:|---:|"]
        lines.append(f"| dense .weights | {dense_bytes:,} | 1.0x |")
        lines += [f"| {k} | {files[k]:,} | {dense_bytes / files[k]:.1f}x |" for k in shipped]
    lines += [
        "",
        f"Sparse file: {_num(files.get('pruned.sparse'))} bytes. "
        f"Pruned targets' sparsity: {_pct(report['target_sparsity'])}%. "
        f"Input {report['size'][1]}x{report['size'][0]}"
        + (
            f", {report['pruned']['images']} validation images, {report['pruned'].get('device')}"
            if report["pruned"].get("images")
            else ""
        )
        + f". Whole run: {report['minutes']:.1f} min.",
    ]
    if smaller:
        lines += ["", "The last column is the dense model run at the largest smaller input that "
                  "costs at most the shrunk one's FLOPs, 2% over allowed (no pruning, no "
                  "training): a cut is worth shipping only where it beats that."]  # fmt: skip
    if report.get("measured") is False:
        lines += ["", "**Accuracy was not measured**: no --data/--val was given, so this run "
                  "pruned from the weights alone (no fine-tuning, no refit, no INT8 file). "
                  "Measure it before you ship it: yolo-prune eval --weights pruned.sparse "
                  "--data FOLDER."]  # fmt: skip
    if report.get("refit_at") not in (None, "the end"):
        lines += ["", f"The cut was refitted to the dense model by least squares on "
                  f"{report['refit_images']} training images at {report['refit_at']}."]  # fmt: skip
    if report.get("blocks_removed"):
        blocks = report["blocks_removed"]
        lines += ["", f"Residual blocks removed whole (depth): {len(blocks)}, layers "
                  + ", ".join(blocks) + "."]  # fmt: skip
    if report.get("caps_bind") is not None:
        bound = report["caps_bind"]
        lines += ["", "Conservative caps: " + ("bind in " + ", ".join(
            f"{r['name']} ({100 * r['pruned']:.0f}% pruned, cap {100 * r['cap']:.0f}%)"
            for r in bound) if bound else "set, but never bind") + "."]  # fmt: skip
    admm = report.get("admm")
    if admm:
        whole = set(admm.get("layers_whole") or ())
        worst = sorted(((n, r) for n, r in admm["layers"].items() if n not in whole),
                       key=lambda kv: -kv[1])[:3]  # fmt: skip
        lines += ["", f"ADMM before the hard prune: ||W - Z|| / ||W|| = "
                  f"{admm['final_relative_residual']:.4f} after {admm['z_steps']} Z-steps "
                  f"(rho {admm['final_rho']:.3g}); largest per layer: "
                  + ", ".join(f"{n} {r:.3f}" for n, r in worst)
                  + (f" ({len(whole)} layers going whole left out: their Z is 0, so theirs is 1)"
                     if whole else "")
                  + " (all layers in report.json)."]  # fmt: skip
    trained = report.get("dense_training")
    if trained:
        lines += ["", f"The dense model was trained here: {trained['epochs']} epochs, "
                  f"{trained['minutes']:.1f} min (dense.weights)."]  # fmt: skip
    if report["phases"]:
        lines += ["", "| phase | epochs | minutes |", "|---|---:|---:|"]
        lines += [f"| {p['phase']} | {p['epochs']} | {p['minutes']:.1f} |"
                  for p in report["phases"]]  # fmt: skip
    else:
        lines += ["", "No fine-tuning."]
    return "\n".join(lines) + "\n"
