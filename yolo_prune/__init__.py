"""yolo_prune: Darknet YOLO detectors in PyTorch, and the pruning toolkit for them."""

from yolo_prune.errors import YoloPruneError

__version__ = "0.1.0"

__all__ = ["YoloPruneError", "__version__"]
