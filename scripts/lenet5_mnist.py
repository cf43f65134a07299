#!/usr/bin/env python
"""LeNet-5 on MNIST: the old name of ``scripts/prune_classifier.py``, kept for existing commands.

    python scripts/lenet5_mnist.py --data ../shared/data/mnist --out runs/lenet5

Takes the same arguments; with an MNIST folder it runs ``cfg/recipes/lenet5.yaml`` exactly as
before (same seed, same numbers).
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("prune_classifier.py")), run_name="__main__")
