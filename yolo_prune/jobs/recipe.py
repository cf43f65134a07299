"""Pruning recipes: a YAML file of everything ``yolo-prune prune`` needs, with CLI overrides.

A recipe (``cfg/recipes/<model>.yaml``) reads::

    model: cfg/yolov3-tiny.cfg      # Darknet cfg (paths: relative to the working directory,
    weights: null                   #   else to the folder holding cfg/)
    size: 320                       # network input side (null: the cfg's)
    method: admm                    # which entry of `methods` runs (CLI --method)
    ratio: 0.5                      # the global removal ratio (CLI --ratio)
    train: {batch_size: 8, lr: 0.001}            # fine-tuning settings (TrainConfig fields)
    phases: {admm: {lr: 0.001}, retrain: {}}     # per-phase overrides of `train`
    distill: 0.0                    # weight of the dense model as a teacher (0: off); a
                                    #   variant may set its own `distill`
    labels: 1.0                     # weight of the loss on the labels (0 with distill > 0:
                                    #   learn from the teacher alone); per variant too
    refit: 0                        # after removing channels, refit the shrunk model to the
                                    #   dense one on this many training images by least
                                    #   squares (one-shot channel pruning; 0: off); per variant too
    qat_epochs: 0                   # quantization-aware fine-tuning of a copy of the shipped
                                    #   model before pruned-int8.onnx (0: post-training only;
                                    #   phase `qat` in `phases` sets its training)
    methods:                        # named variants; `method` is a registered method
      - {name: admm, method: admm, epochs: 4, retrain_epochs: 4, policy: {first_cap: 0.5}}
      - {name: magnitude, method: magnitude, epochs: 4}

Command-line flags override the top-level keys; ``--set key=value`` overrides any key, dotted
(``train.lr=0.002``, ``methods.admm.rho=0.01``), the value read as YAML. Unknown keys are errors
that name the key and the ones that are known. A ``--method`` that is not in ``methods`` but is
a registered method runs with its defaults.

The ratio of the chosen variant is the recipe's ``ratio``; a variant's progressive ``ratios``
(ADMM stages) are scaled to end at it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from yolo_prune.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, except that ``1e-4`` is a float: YAML 1.1 wants ``1.0e-4`` and
    would hand the option a string (``lr: 1e-4`` was refused with a type error)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    loader = _Loader(text)  # a SafeLoader: plain data only, never arbitrary objects
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


TOP_KEYS = {
    "model": "Darknet cfg path",
    "weights": "Darknet .weights to start from",
    "data": "training dataset folder",
    "val": "validation dataset folder",
    "size": "network input side",
    "method": "name of the variant in `methods` to run",
    "ratio": "global removal ratio",
    "flops": "structured methods: the ratio is searched so the shrunk model keeps this "
    "fraction of the dense FLOPs",
    "train": "fine-tuning settings (TrainConfig fields)",
    "phases": "per-phase overrides of `train`",
    "distill": "weight of the dense teacher's loss (0: off)",
    "labels": "weight of the loss on the labels (0 with distill: the teacher alone)",
    "refit": "training images for the least-squares refit of the shrunk model (0: off)",
    "methods": "list of named method variants",
    "qat_epochs": "quantization-aware fine-tuning epochs of the shipped model before "
    "pruned-int8.onnx is written (0: post-training quantization only)",
    "dense_epochs": "train the dense model this many epochs when no --weights is given "
    "(classifiers)",
    "budget_epochs": "every variant must spend exactly this many training epochs (equal-budget "
    "comparisons)",
}
# Phase names a recipe's `phases` may hold besides the methods' own (see `known_phases`).
JOB_PHASES = {
    "default": "phases with no entry of their own",
    "dense": "the dense training",
    "qat": "the quantization-aware fine-tuning before the INT8 export (`qat_epochs`)",
}
# Keys of a method variant that the job reads itself (the rest configure the method).
_JOB_VARIANT_KEYS = {"method", "distill", "labels", "refit"}


def train_keys() -> set[str]:
    """Every setting a ``train``/``phases`` entry may hold, for either task (the task of the
    cfg then checks its own when the job starts)."""
    from yolo_prune.jobs.tasks import ClassificationTask, DetectionTask

    return DetectionTask.train_fields() | ClassificationTask.train_fields()


def known_phases() -> set[str]:
    """Phase names the registered methods run (``finetune`` for ``finetune-2``, ...), plus the
    job's own (``default``, ``dense``)."""
    from yolo_prune.prune.registry import METHODS

    return set(JOB_PHASES) | {p for spec in METHODS.values() for p in spec.config.PHASES}


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe at ``path`` as a plain dict (``methods`` keyed by name), checked for typos."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such recipe file (see cfg/recipes/ for examples)")
    try:
        data = _load_yaml(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p.name}: not a YAML recipe (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{p.name}:{mark.line + 1}" if mark is not None else p.name
        problem = getattr(exc, "problem", None) or "malformed"
        raise ConfigError(f"{at}: not valid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p.name}: expected a mapping of keys, got {type(data).__name__}")
    recipe = normalise(data, where=p.name)
    check_variants(recipe, where=p.name)
    recipe["_dir"] = str(p.resolve().parent)
    return recipe


def check_variants(recipe: Mapping[str, Any], *, where: str = "recipe") -> None:
    """Build every variant's method config, so a typo in any of them fails when the recipe is
    read rather than when that variant runs. A variant without a ratio of its own is checked
    at the recipe's (or a placeholder: the CLI gives it)."""
    from yolo_prune.errors import PruneError
    from yolo_prune.prune.registry import build_config

    for name, entry in recipe["methods"].items():
        options = {k: v for k, v in entry.items() if k not in _JOB_VARIANT_KEYS}
        try:
            if "ratio" in _fields(entry["method"]) and "ratio" not in options:
                stages = options.get("ratios")
                options["ratio"] = recipe.get("ratio") or (stages[-1] if stages else 0.5)
            build_config(entry["method"], options)
        except (ConfigError, PruneError) as exc:  # say which file and variant
            raise type(exc)(f"{where}: methods.{name}: {exc}") from None


def normalise(data: Mapping[str, Any], *, where: str = "recipe") -> dict[str, Any]:
    """Check keys and types; turn the ``methods`` list into ``{name: options}``."""
    out = copy.deepcopy(dict(data))
    unknown = sorted(k for k in out if k not in TOP_KEYS and not k.startswith("_"))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(TOP_KEYS))}"
        )
    for key in ("train", "phases"):
        value = out.get(key) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        out[key] = dict(value)
    _check_train(out["train"], f"{where}: train")
    phases = known_phases()
    for phase, values in out["phases"].items():
        if phase not in phases:
            raise ConfigError(
                f"{where}: phases.{phase}: no method runs a phase of that name; known phases: "
                f"{', '.join(sorted(phases))}"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: phases.{phase} must be a mapping, got {values!r}")
        _check_train(values, f"{where}: phases.{phase}")
    methods = out.get("methods") or []
    if isinstance(methods, Mapping):
        methods = [{"name": k, **(v or {})} for k, v in methods.items()]
    if not isinstance(methods, Sequence) or isinstance(methods, str):
        raise ConfigError(f"{where}: methods must be a list of variants")
    by_name: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(methods):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ConfigError(f"{where}: methods[{i}] needs a 'name'")
        entry = dict(entry)
        name = str(entry.pop("name"))
        entry.setdefault("method", name)
        by_name[name] = entry
    out["methods"] = by_name
    for key, kind in (("ratio", (int, float)), ("size", int), ("distill", (int, float)),
                      ("labels", (int, float)), ("refit", int), ("flops", (int, float)),
                      ("dense_epochs", int), ("budget_epochs", int)):  # fmt: skip
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    return out


def _check_train(values: Mapping[str, Any], where: str) -> None:
    known = train_keys()
    unknown = sorted(set(values) - known)
    if unknown and unknown[0].endswith("epochs"):
        raise ConfigError(
            f"{where}: unknown option {unknown[0]!r}; epochs are set per method variant "
            "(methods: [{name: ..., method: ..., epochs: N}]) or by dense_epochs"
        )
    if unknown:
        raise ConfigError(
            f"{where}: unknown option {unknown[0]!r}; known options: {', '.join(sorted(known))}"
        )
    from yolo_prune.jobs.tasks import check_train_types

    check_train_types(values, where)


def apply_overrides(recipe: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """``recipe`` with ``key=value`` assignments (dotted keys, YAML values) applied."""
    out = copy.deepcopy(recipe)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.002")
        try:
            value = _load_yaml(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return normalise(out, where="--set")


def resolve_path(recipe: Mapping[str, Any], value: str | Path | None) -> Path | None:
    """A recipe path: as given if it exists from here, else relative to the recipe's project."""
    if value is None:
        return None
    p = Path(value)
    if p.is_absolute() or p.exists() or "_dir" not in recipe:
        return p
    base = Path(recipe["_dir"])
    for folder in (base, *base.parents[:2]):
        if (folder / p).exists():
            return folder / p
    return p


def variant_options(recipe: Mapping[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """``(registered method, options)`` of the variant ``name`` at the recipe's ratio."""
    from yolo_prune.prune.registry import METHODS

    entry = recipe["methods"].get(name)
    if entry is None:
        if name not in METHODS:
            known = sorted(set(recipe["methods"]) | set(METHODS))
            raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(known)}")
        entry = {"method": name}
    options = {k: v for k, v in entry.items() if k not in _JOB_VARIANT_KEYS}
    method = entry["method"]
    ratio = recipe.get("ratio")
    if ratio is not None and "ratio" in _fields(method):
        stages = options.get("ratios")
        old = options.get("ratio") or (stages[-1] if stages else None)
        options["ratio"] = float(ratio)
        if stages and old:
            options["ratios"] = [float(s) * float(ratio) / float(old) for s in stages]
    return method, options


def variant_distill(recipe: Mapping[str, Any], name: str) -> float:
    """Teacher weight of the variant ``name``: its own ``distill``, else the recipe's (0: off)."""
    entry = recipe["methods"].get(name) or {}
    value = entry.get("distill", recipe.get("distill")) or 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"methods.{name}.distill={value!r}; expected a weight >= 0")
    return float(value)


def variant_labels(recipe: Mapping[str, Any], name: str) -> float:
    """Weight of the loss on the labels for the variant ``name``: its own ``labels``, else the
    recipe's, else 1. 0 trains on the teacher alone, so it needs a ``distill`` weight."""
    entry = recipe["methods"].get(name) or {}
    value = entry.get("labels", recipe.get("labels"))
    value = 1.0 if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"methods.{name}.labels={value!r}; expected a weight >= 0")
    if value == 0 and not variant_distill(recipe, name):
        raise ConfigError(
            f"methods.{name}: labels=0 and no distill weight leave nothing to learn; "
            "set distill above 0 (the dense model as a teacher) or labels above 0"
        )
    return float(value)


DEFAULT_REFIT_IMAGES = 32  # least-squares refit of a structured cut unless a recipe says otherwise


def variant_refit(recipe: Mapping[str, Any], name: str) -> int:
    """Refit images of the variant ``name``: its own ``refit``, else the recipe's, else
    ``DEFAULT_REFIT_IMAGES`` for a cut that comes at once and 0 for a method whose training
    leads up to it (``TRAINS_TOWARDS_CUT``: ADMM). Only models that lose whole channels are
    refitted.

    The refit makes each layer after a cut reproduce the dense model's output. After a one-shot
    cut that is what the rest of the network expects; after ADMM the network has learnt to do
    without the channels, and pulling a layer back to the dense features undoes that (measured
    in docs/structured_tuning.md, section 8)."""
    entry = recipe["methods"].get(name) or {}
    if "refit" in entry or "refit" in recipe:
        value = entry.get("refit", recipe.get("refit"))
    else:
        from yolo_prune.prune.registry import METHODS

        spec = METHODS.get(entry.get("method", name))
        leads_up = spec is not None and getattr(spec.config, "TRAINS_TOWARDS_CUT", False)
        value = 0 if leads_up else DEFAULT_REFIT_IMAGES
    value = 0 if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"methods.{name}.refit={value!r}; expected a number of images >= 0")
    return value


def _fields(method: str) -> set[str]:
    from yolo_prune.prune.registry import method_spec

    return {f.name for f in dataclasses.fields(method_spec(method).config)}


def to_yaml(recipe: Mapping[str, Any]) -> str:
    """The recipe as YAML, ``methods`` back as a list (what ``read_recipe`` accepts)."""
    data = {k: v for k, v in recipe.items() if not k.startswith("_")}
    data["methods"] = [{"name": n, **v} for n, v in recipe.get("methods", {}).items()]
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
