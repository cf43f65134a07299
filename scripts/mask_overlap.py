#!/usr/bin/env python
"""How far two pruned models removed the same weights: per layer, the Jaccard index of their
zero sets.

    .venv/bin/python scripts/mask_overlap.py \\
        --a runs/detector_benchmark/yolov3-tiny/unstructured/r0.9/ours-u \\
        --b runs/detector_benchmark/yolov3-tiny/unstructured/r0.9/magnitude [--out overlap.json]

Each of --a/--b is a `yolo-prune prune` output folder (its ``pruned.sparse``: the dense layout
with zeros in place, which carries the cfg). 1.0: the same weights are zero in both; 0.0: none
in common (a layer neither pruned is left out). For a structured cut the zero weights are the
removed filters, so the index compares the channels the two methods chose, weighted by filter
size. Prints one line per layer and the index over all of them; ``--out`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from yolo_prune.jobs.models import load_model


def zero_sets(run: Path) -> dict[str, torch.Tensor]:
    """``weight name -> bool tensor`` (True: zero) of every conv/fc weight of a prune run."""
    model, _ = load_model(None, run / "pruned.sparse")
    return {n: p.detach() == 0 for n, p in model.named_parameters()
            if n.endswith(("conv.weight", "fc.weight"))}  # fmt: skip


def overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per layer: the zero counts of both and the Jaccard index of the zero sets."""
    if a.keys() != b.keys():
        raise SystemExit("the two runs are not the same network: their layers differ")
    rows = {}
    for name, za in a.items():
        zb = b[name]
        if za.shape != zb.shape:
            raise SystemExit(f"{name}: shapes {tuple(za.shape)} and {tuple(zb.shape)} differ")
        union = int((za | zb).sum())
        if union:
            inter = int((za & zb).sum())
            rows[name] = {
                "zeros_a": int(za.sum()),
                "zeros_b": int(zb.sum()),
                "jaccard": inter / union,
            }
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=Path, required=True, help="a prune output folder")
    p.add_argument("--b", type=Path, required=True, help="another, of the same network")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args()
    for run in (args.a, args.b):
        if not (run / "pruned.sparse").is_file():
            raise SystemExit(f"{run}: no pruned.sparse; give a `yolo-prune prune` output folder")
    za, zb = zero_sets(args.a), zero_sets(args.b)
    rows = overlap(za, zb)
    inter = sum(int((za[n] & zb[n]).sum()) for n in rows)
    union = sum(int((za[n] | zb[n]).sum()) for n in rows)
    total = inter / union if union else 1.0
    for name, r in rows.items():
        print(
            f"{name:28s} zeros {r['zeros_a']:>9d} / {r['zeros_b']:>9d}  Jaccard {r['jaccard']:.4f}"
        )
    print(f"all layers: Jaccard {total:.4f}")
    if args.out:
        out = {"a": str(args.a), "b": str(args.b), "jaccard": total, "layers": rows}
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
