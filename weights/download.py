"""Fetch and verify canonical Darknet weights: ``python weights/download.py NAME [NAME ...]``."""

import sys

from yolo_prune.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
