"""Pruning: targets, projections, policy, ADMM and its rivals, masks, sparse storage.

Works on any ``nn.Module``; model knowledge arrives only through the optional methods
documented in :mod:`yolo_prune.prune.targets`.
"""

from yolo_prune.prune.admm import ADMMConfig, ADMMHook, ADMMPruner
from yolo_prune.prune.base import PruneResult, prepare_targets
from yolo_prune.prune.magnitude import (
    DeepCompressionConfig,
    DeepCompressionPruner,
    MagnitudeConfig,
    MagnitudePruner,
)
from yolo_prune.prune.masks import MaskHook, apply_masks_, mask_optimizer_state_
from yolo_prune.prune.policy import ConservativePolicy
from yolo_prune.prune.projections import (
    PROJECTIONS,
    get_projection,
    project_channels,
    project_filters,
    project_global,
    project_layerwise,
    project_shapes,
)
from yolo_prune.prune.pruner import Callbacks, Pruner
from yolo_prune.prune.registry import (
    METHODS,
    build_config,
    build_pruner,
    register_method,
)
from yolo_prune.prune.soft_filter import SoftFilterConfig, SoftFilterHook, SoftFilterPruner
from yolo_prune.prune.sparse import load_sparse, save_sparse
from yolo_prune.prune.targets import TargetConfig, select_targets

__all__ = [
    "ADMMConfig",
    "ADMMHook",
    "ADMMPruner",
    "Callbacks",
    "ConservativePolicy",
    "DeepCompressionConfig",
    "DeepCompressionPruner",
    "METHODS",
    "MagnitudeConfig",
    "MagnitudePruner",
    "Pruner",
    "MaskHook",
    "PROJECTIONS",
    "PruneResult",
    "SoftFilterConfig",
    "SoftFilterHook",
    "SoftFilterPruner",
    "TargetConfig",
    "apply_masks_",
    "build_config",
    "build_pruner",
    "get_projection",
    "load_sparse",
    "mask_optimizer_state_",
    "prepare_targets",
    "project_channels",
    "project_filters",
    "project_global",
    "project_layerwise",
    "project_shapes",
    "register_method",
    "save_sparse",
    "select_targets",
]
