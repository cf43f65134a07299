"""Pruning methods by name: ``build_pruner("admm", {...})``.

A method is a config dataclass (frozen, validated on construction) and a
:class:`~yolo_prune.prune.pruner.Pruner` subclass (``run(model, *, fit, evaluate=None,
importance=None) -> PruneResult``, see :mod:`yolo_prune.prune.base`).
New methods register with :func:`register_method`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from yolo_prune.errors import ConfigError, PruneError
from yolo_prune.prune.admm import ADMMConfig, ADMMFilterConfig, ADMMPruner, LayerwiseADMMConfig
from yolo_prune.prune.magnitude import (
    ChannelConfig,
    DeepCompressionConfig,
    DeepCompressionPruner,
    MagnitudeConfig,
    MagnitudePruner,
)
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.pruner import Pruner
from yolo_prune.prune.soft_filter import SoftFilterConfig, SoftFilterPruner
from yolo_prune.prune.targets import TargetConfig
from yolo_prune.prune.tp_baseline import TorchPruningConfig, TorchPruningPruner


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    config: type  # the method's config dataclass
    build: Callable[[Any], Pruner]  # config -> pruner


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config: type, build: Callable[[Any], Pruner]) -> None:
    """Make a method available by ``name`` to :func:`build_pruner` and recipes."""
    if name in METHODS:
        raise ValueError(f"pruning method {name!r} is already registered")
    METHODS[name] = MethodSpec(config=config, build=build)


register_method("admm", ADMMConfig, ADMMPruner)
register_method("admm-layerwise", LayerwiseADMMConfig, ADMMPruner)
register_method("admm-filter", ADMMFilterConfig, ADMMPruner)
register_method("magnitude", MagnitudeConfig, MagnitudePruner)
register_method("channel", ChannelConfig, MagnitudePruner)
register_method("deep-compression", DeepCompressionConfig, DeepCompressionPruner)
register_method("soft-filter", SoftFilterConfig, SoftFilterPruner)
# a benchmark baseline: Torch-Pruning chooses the channels (needs the `bench` extra)
register_method("torch-pruning", TorchPruningConfig, TorchPruningPruner)


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise PruneError(
            f"unknown pruning method {name!r}; choose one of: {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


_NESTED = {"targets": TargetConfig, "policy": ConservativePolicy}


def _build_dataclass(cls: type, values: Mapping[str, Any], where: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {values!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"{where}: unknown option {unknown[0]!r}; known options: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for key, value in values.items():
        nested = _NESTED.get(key)
        if nested is not None and isinstance(value, Mapping):
            value = _build_dataclass(nested, value, f"{where}.{key}")
        elif nested is not None and value is not None and not isinstance(value, nested):
            raise ConfigError(
                f"{where}.{key}: expected a mapping of {nested.__name__} options, got {value!r}"
            )
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_config(method: str, options: Mapping[str, Any] | None = None) -> Any:
    """The validated config dataclass of ``method`` from plain ``options`` (YAML/CLI values)."""
    spec = method_spec(method)
    return _build_dataclass(spec.config, dict(options or {}), method)


def build_pruner(method: str, config: Mapping[str, Any] | Any | None = None) -> Pruner:
    """A pruner for ``method``, from its config dataclass or a mapping of options."""
    spec = method_spec(method)
    if config is None or isinstance(config, Mapping):
        config = build_config(method, config)
    elif not isinstance(config, spec.config):
        raise ConfigError(
            f"{method}: expected a {spec.config.__name__}, got {type(config).__name__}"
        )
    return spec.build(config)
