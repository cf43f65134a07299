"""What the prune job needs from a task: load the dense model, fit it for a phase with the
pruner's hooks, evaluate it, and (optionally) measure importance and give calibration images.

:class:`DetectionTask` (a Darknet YOLO model on COCO-style data, AP50) and
:class:`ClassificationTask` (a Darknet classifier on MNIST / CIFAR-10, top-1) implement
:class:`Task`; :func:`build_task` picks one from the cfg (a ``[yolo]`` layer makes a detector).
The prune and sweep jobs are the same for both.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from yolo_prune.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskInputs:
    """The data side of a job, as the CLI resolved it."""

    cfg: Path  # Darknet .cfg of the dense model
    data: Path | None  # training dataset folder (None: a method that needs no data)
    val: Path | None  # validation dataset folder (detection; None: --data)
    val_split: str | None = None  # validation split (detection; None: the first val* split)
    device: str = "cpu"  # torch device
    progress: bool = True  # tqdm bars
    max_val_images: int | None = None  # evaluate on the first images only (smoke runs)


class Task(Protocol):
    """One kind of model and data, as the prune job sees it."""

    kind: str  # "detection" or "classification"
    metric: str  # the main figure of ``evaluate`` (higher is better), e.g. "AP50" or "top1"
    inputs: TaskInputs

    def with_settings(self, train: Mapping[str, Any]) -> Task:
        """The same task with the recipe's ``train`` settings (what evaluation and the data
        splits depend on: letterbox, ``val_size``, normalisation)."""
        ...

    @classmethod
    def train_fields(cls) -> set[str]:
        """The settings a recipe's ``train`` / ``phases`` entries may set for this task."""
        ...

    def check_settings(self, settings: Mapping[str, Any], where: str) -> None:
        """Raise a ``ConfigError`` naming ``where`` if ``settings`` do not build a phase."""
        ...

    def load_dense(self, weights: Path | None, *, size: int | None) -> nn.Module:
        """The dense model of the cfg, from ``weights`` (None: fresh initialisation)."""
        ...

    def fit(self, model: nn.Module, phase: str, epochs: int, hooks: Sequence[Any], *,
            settings: Mapping[str, Any], teacher: nn.Module | None, distill: float,
            out: Path, labels: float = 1.0, resume: bool = False) -> dict[str, Any]:  # fmt: skip
        """Train ``model`` in place (with ``resume``: continue from ``out``'s checkpoint);
        returns the last epoch's figures."""
        ...

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The report's figures on the held-out data: ``metric`` and the size figures."""
        ...

    def score(self, model: nn.Module) -> float:
        """``metric`` on the data that pruning decisions may look at (Deep Compression)."""
        ...

    def importance(self) -> Any:
        """``importance(model, names)`` for the Fisher channel criterion, or None."""
        ...

    def calibration(self, model: nn.Module, images: int) -> torch.Tensor:
        """``images`` training inputs ``[B, C, H, W]`` in the model's geometry (refit)."""
        ...


def is_detector_cfg(cfg: Path) -> bool:
    from yolo_prune.darknet.cfg import load_cfg

    return any(section.kind == "yolo" for section in load_cfg(cfg))


def build_task(inputs: TaskInputs) -> Task:
    """The task of ``inputs.cfg``: detection with a ``[yolo]`` layer, else classification; the
    data folders are checked to be of that task's kind."""
    from yolo_prune.data.classification import classification_dataset

    detector = is_detector_cfg(inputs.cfg)
    for flag, folder in (("--data", inputs.data), ("--val", inputs.val)):
        if folder is None:
            continue
        found = classification_dataset(folder)
        if detector and found is not None:
            raise ConfigError(
                f"{flag} {folder} is {found}, a classification dataset, but {inputs.cfg.name} is "
                "a detector (it has [yolo] layers); give a detection dataset (COCO or YOLO txt)"
            )
        if not detector and found is None:
            raise ConfigError(
                f"{flag} {folder} is not a classification dataset (MNIST or CIFAR-10), but "
                f"{inputs.cfg.name} is a classifier (no [yolo] layer)"
            )
    return DetectionTask(inputs) if detector else ClassificationTask(inputs)


def _check_dataclass(cls: type, settings: Mapping[str, Any], where: str, **fixed: Any) -> Any:
    known = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"{where}: {unknown[0]!r} is not a training option of this task; "
            f"known options: {', '.join(sorted(known))}"
        )
    for key, value in settings.items():
        error = _type_error(cls, key, value)
        if error:
            raise ConfigError(f"{where}: {error}")
    try:
        return cls(**fixed, **settings)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_SCALARS = {float: (float, int), int: (int,), bool: (bool,), str: (str,), Path: (str, Path),
            type(None): (type(None),)}  # fmt: skip
_KIND = {bool: "true or false", float: "a number", int: "an integer", Path: "a path",
         str: "a string"}  # fmt: skip


def check_train_types(settings: Mapping[str, Any], where: str) -> None:
    """Refuse a ``train``/``phases`` value whose type no task's training config takes (``lr:
    fast``), before the task is known (:func:`yolo_prune.jobs.recipe.read_recipe`)."""
    from yolo_prune.classify.train import ClassifyTrainConfig
    from yolo_prune.detect.train import TrainConfig

    configs = (TrainConfig, ClassifyTrainConfig)
    for key, value in settings.items():
        errors = [_type_error(c, key, value) for c in configs if key in _field_names(c)]
        if errors and all(errors):
            raise ConfigError(f"{where}: {errors[0]}")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _type_error(cls: type, key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the dataclass field ``key`` of ``cls`` (None: it can, or the
    field is not a plain scalar and its own constructor checks it)."""
    allowed = _scalar_types(typing.get_type_hints(cls)[key])
    if allowed is None:
        return None
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        kind = next(_KIND[t] for t in (bool, float, int, Path, str) if t in allowed)
        return f"{key}={value!r}; expected {kind}"
    return None


def _scalar_types(hint: Any) -> tuple[type, ...] | None:
    """The Python types a recipe value may have for a field typed ``hint``; None: not a plain
    scalar (nested configs are checked by their own constructors)."""
    parts = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if not all(p in _SCALARS for p in parts):
        return None
    return tuple(t for p in parts for t in _SCALARS[p])


def _phase_figures(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return dict(history[-1]) if history else {}


class DetectionTask:
    """A Darknet YOLO detector, fine-tuned on COCO / YOLO-txt data, scored by COCO AP50."""

    kind = "detection"
    metric = "AP50"
    _JOB_OWNED = frozenset({"cfg", "data", "out", "epochs", "weights", "val", "resume",
                            "max_steps", "size", "device", "progress", "distill",
                            "labels"})  # fmt: skip

    def __init__(self, inputs: TaskInputs, *, letterbox: bool | None = None):
        self.inputs = inputs
        self.letterbox = letterbox

    def with_settings(self, train: Mapping[str, Any]) -> DetectionTask:
        """The task using the recipe's ``train.letterbox`` in evaluation and calibration."""
        return DetectionTask(self.inputs, letterbox=train.get("letterbox"))

    @classmethod
    def train_fields(cls) -> set[str]:
        from yolo_prune.detect.train import TrainConfig

        return {f.name for f in dataclasses.fields(TrainConfig)} - cls._JOB_OWNED

    def check_settings(self, settings: Mapping[str, Any], where: str) -> None:
        from yolo_prune.detect.train import TrainConfig

        _check_dataclass(TrainConfig, settings, where, cfg=self.inputs.cfg, data=Path("."),
                         out=Path("."), epochs=1)  # fmt: skip

    def load_dense(self, weights: Path | None, *, size: int | None) -> nn.Module:
        from yolo_prune.darknet import Darknet
        from yolo_prune.jobs.models import load_model

        if weights is None:
            return Darknet.from_cfg(self.inputs.cfg, size=size)
        return load_model(self.inputs.cfg, weights, size=size)[0]

    def fit(self, model: nn.Module, phase: str, epochs: int, hooks: Sequence[Any], *,
            settings: Mapping[str, Any], teacher: nn.Module | None, distill: float,
            out: Path, labels: float = 1.0, resume: bool = False) -> dict[str, Any]:  # fmt: skip
        from yolo_prune.detect.train import TrainConfig, train_detector

        config = _check_dataclass(
            TrainConfig, settings, f"train settings of phase {phase!r}", cfg=self.inputs.cfg,
            data=self._data(), out=out, epochs=epochs, size=model.input_shape[1],
            device=self.inputs.device, progress=self.inputs.progress, distill=distill,
            labels=labels, resume=resume,
        )  # fmt: skip
        result = train_detector(config, hooks=hooks, model=model, teacher=teacher)
        if result["ema"] is not None:  # continue from (and prune) the averaged weights
            model.load_state_dict(result["ema"].state_dict())
        return _phase_figures(result["history"])

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """COCO AP and size figures on the validation set; no timing (the job times its
        models side by side at the end)."""
        from yolo_prune.eval.detection import evaluate_detector

        if self.inputs.val is None:
            from yolo_prune.eval.detection import size_figures

            return size_figures(model)
        return evaluate_detector(
            model,
            self.inputs.val,
            split=self.inputs.val_split,
            letterbox=self.letterbox,
            device=self.inputs.device,
            max_images=self.inputs.max_val_images,
            latency=False,
            progress=self.inputs.progress,
        )

    def score(self, model: nn.Module) -> float:
        return float(self.evaluate(model)["AP50"])

    def importance(self) -> Any:
        if self.inputs.data is None:
            return None
        from yolo_prune.detect.calibrate import fisher_importance

        return fisher_importance(
            self.inputs.data,
            letterbox=self.letterbox,
            device=self.inputs.device,
            progress=self.inputs.progress,
        )

    def calibration(self, model: nn.Module, images: int) -> torch.Tensor:
        from yolo_prune.detect.calibrate import calibration_images

        return calibration_images(model, self._data(), images=images, letterbox=self.letterbox)

    def deploy_calibration(self, model: nn.Module, images: int) -> Any:
        """Batches that calibrate the INT8 export (the model's own pre-processing)."""
        from yolo_prune.export.quantize import calibration_batches

        return calibration_batches(model, self._data(), images=images, letterbox=self.letterbox)

    def _data(self) -> Path:
        if self.inputs.data is None:
            raise ConfigError("this step needs training data: give --data FOLDER")
        return self.inputs.data


class ClassificationTask:
    """A Darknet classifier on MNIST or CIFAR-10, scored by top-1 accuracy.

    The training split loses its last ``train.val_size`` images to a held-out ``val`` split:
    pruning decisions (Deep Compression's threshold) look at ``val``, the report at ``test``.
    """

    kind = "classification"
    metric = "top1"

    def __init__(self, inputs: TaskInputs, *, base: Mapping[str, Any] | None = None):
        self.inputs = inputs
        self.base = dict(base or {})  # the recipe's ``train`` (split sizes, normalisation)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._batches: Any = None

    def with_settings(self, train: Mapping[str, Any]) -> ClassificationTask:
        return ClassificationTask(self.inputs, base=train)

    @classmethod
    def train_fields(cls) -> set[str]:
        from yolo_prune.classify.train import ClassifyTrainConfig

        return {f.name for f in dataclasses.fields(ClassifyTrainConfig)}

    def check_settings(self, settings: Mapping[str, Any], where: str) -> None:
        from yolo_prune.classify.train import ClassifyTrainConfig

        _check_dataclass(ClassifyTrainConfig, settings, where)

    def load_dense(self, weights: Path | None, *, size: int | None) -> nn.Module:
        from yolo_prune.darknet import Darknet
        from yolo_prune.jobs.models import load_model

        if size is not None:
            raise ConfigError("size: a classifier runs at its cfg's input size; drop size/--size")
        if weights is None:
            torch.manual_seed(self._config().seed)
            return Darknet.from_cfg(self.inputs.cfg)
        return load_model(self.inputs.cfg, weights)[0]

    def _config(self, settings: Mapping[str, Any] | None = None) -> Any:
        from yolo_prune.classify.train import ClassifyTrainConfig

        return _check_dataclass(ClassifyTrainConfig, {**self.base, **(settings or {})}, "train")

    def _data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self._splits is None:
            from yolo_prune.data.classification import ShuffledBatches, load_splits

            if self.inputs.data is None:
                raise ConfigError("this step needs training data: give --data FOLDER")
            config = self._config()
            device = torch.device(self.inputs.device)
            splits = load_splits(self.inputs.data, val_size=config.val_size,
                                 max_images=config.max_images)  # fmt: skip
            self._splits = {k: (x.to(device), y.to(device)) for k, (x, y) in splits.items()}
            norm = config.normalize or {}
            x, y = self._splits["train"]
            self._batches = ShuffledBatches(x, y, batch_size=config.batch_size,
                                            shift=config.shift, seed=config.seed,
                                            flip=config.flip, mean=norm.get("mean"),
                                            std=norm.get("std"))  # fmt: skip
            for name in ("val", "test"):  # evaluation sees the same normalised input
                xs, ys = self._splits[name]
                self._splits[name] = (self._batches.normalise(xs), ys)
        return self._splits

    def fit(self, model: nn.Module, phase: str, epochs: int, hooks: Sequence[Any], *,
            settings: Mapping[str, Any], teacher: nn.Module | None, distill: float,
            out: Path, labels: float = 1.0, resume: bool = False) -> dict[str, Any]:  # fmt: skip
        from yolo_prune.classify.train import train_classifier

        config = self._config(settings)
        self._data()
        if config.batch_size != self._batches.batch_size:
            self._batches.batch_size = config.batch_size
        figures = train_classifier(model, self._batches, config, epochs=epochs, hooks=hooks,
                                   device=self.inputs.device, teacher=teacher,
                                   distill=distill, labels=labels, out=out,
                                   resume=resume)  # fmt: skip
        figures["val_top1"] = self.score(model)
        logger.info("phase %s: %d epochs, val top-1 %.4f", phase, epochs, figures["val_top1"])
        return figures

    def _top1(self, model: nn.Module, split: str, *, shared: bool = False) -> tuple[float, int]:
        """Top-1 on ``split`` and the images it counts. ``shared``: under ``torchrun`` each rank
        scores its part of the images and the counts are summed, so every rank gets the same
        figure (a collective: every rank must call it)."""
        from yolo_prune.engine.distributed import all_reduce_sum, dist_info
        from yolo_prune.eval.accuracy import evaluate_accuracy, tensor_batches

        x, y = self._data()[split]
        if shared:
            info = dist_info(self.inputs.device)
            rank, size = info.rank, info.world_size
            x, y = x.tensor_split(size)[rank], y.tensor_split(size)[rank]
        acc = evaluate_accuracy(model, tensor_batches(x, y, batch_size=1000),
                                device=self.inputs.device)  # fmt: skip
        correct, total = acc.correct, acc.total
        if shared:
            correct, total = all_reduce_sum([correct, total])
        return (correct / total if total else 0.0), total

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        from yolo_prune.eval.detection import size_figures
        from yolo_prune.eval.latency import device_description

        figures = size_figures(model)
        if self.inputs.data is None:
            return figures
        top1, images = self._top1(model, "test")
        return {"task": "classify", "top1": top1, "images": images, "split": "test",
                "device": device_description(self.inputs.device), **figures}  # fmt: skip

    def score(self, model: nn.Module) -> float:
        """Top-1 on ``val``; under ``torchrun`` shared among the ranks, the same on each."""
        return self._top1(model, "val", shared=True)[0]

    def importance(self) -> Any:
        return None  # the Fisher criterion is measured on detection data only

    def calibration(self, model: nn.Module, images: int) -> torch.Tensor:
        x, _ = self._data()["train"]
        return self._batches.normalise(x[:images])
