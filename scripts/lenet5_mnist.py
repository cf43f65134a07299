#!/usr/bin/env python
"""LeNet-5 on MNIST: train the dense model, then run every pruning method at the same budget.

    python scripts/lenet5_mnist.py --data ../shared/data/mnist --out runs/lenet5

Reads cfg/recipes/lenet5.yaml (model cfg, training settings, one entry per method) and writes
under --out:

* ``dense.weights`` / ``dense.sparse``: the dense model (Darknet format / sparse format);
* ``<method>.sparse`` (and ``<method>.weights``): each pruned model;
* ``results.json`` and ``results.md``: a row per method (target ratio, measured sparsity of the
  pruned targets and of all conv+fc weights, test accuracy, dense accuracy, minutes, file sizes)
  plus the figures ``yolo-prune eval`` reports for each saved model;
* ``layer_sparsity.png``: which layers each method pruned; ``admm_residual.png``: ADMM's
  ``||W - Z|| / ||W||`` per Z-step;
* ``history.json``: per-epoch/round figures of each method (ADMM's ||W - Z|| per layer, ...).

Every method starts from the same dense weights and trains ``budget_epochs`` epochs in all.
Until the ``yolo-prune prune`` subcommand exists, the training loop glue lives here.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from yolo_prune.darknet import Darknet
from yolo_prune.data.mnist import mnist_tensors
from yolo_prune.engine import Hook, LossLogHook, Trainer, cross_entropy_loss
from yolo_prune.eval.accuracy import evaluate_accuracy, tensor_batches
from yolo_prune.eval.profile import layer_stats, param_stats, weight_names
from yolo_prune.prune import build_pruner, load_recipe, save_sparse
from yolo_prune.prune.admm import ADMMConfig
from yolo_prune.prune.magnitude import DeepCompressionConfig, MagnitudeConfig
from yolo_prune.prune.soft_filter import SoftFilterConfig

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("lenet5_mnist")


class ShuffledBatches:
    """Epochs of shuffled in-memory batches with a random translation of up to ``shift`` px."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, shift: int, seed: int
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shift = batch_size, shift
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def _translate(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shift
        b, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (b,), generator=self.gen)
        dx = torch.randint(0, 2 * s + 1, (b,), generator=self.gen)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]
        return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.images), generator=self.gen)
        for i in range(0, len(perm), self.batch_size):
            idx = perm[i : i + self.batch_size]
            x = self.images[idx]
            yield (self._translate(x) if self.shift else x), self.labels[idx]


class CosineLR(Hook):
    """Cosine decay of the learning rate over the run's steps (to 1% of the start)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int):
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total_steps), eta_min=optimizer.param_groups[0]["lr"] * 0.01
        )

    def after_step(self, state) -> None:
        self.sched.step()


def method_epochs(cfg) -> int:
    """Training epochs a method config spends (its budget)."""
    if isinstance(cfg, ADMMConfig):
        return cfg.epochs + cfg.retrain_epochs
    if isinstance(cfg, MagnitudeConfig):
        return cfg.epochs
    if isinstance(cfg, DeepCompressionConfig):
        return cfg.rounds * cfg.epochs_per_round
    if isinstance(cfg, SoftFilterConfig):
        return cfg.epochs + cfg.retrain_epochs
    raise TypeError(type(cfg).__name__)


def target_ratio(cfg) -> float | None:
    return getattr(cfg, "ratio", None)


def run_cli_eval(cfg_path: Path, weights: Path, data: Path, out: Path) -> dict:
    """``yolo-prune eval`` in a subprocess, exactly as a user would run it."""
    cmd = [
        sys.executable,
        "-m",
        "yolo_prune.cli.main",
        "eval",
        "--cfg",
        str(cfg_path),
        "--weights",
        str(weights),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def plot_layers(rows: Sequence[dict], layers: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    n = len(rows)
    width = 0.8 / max(1, n)
    for i, row in enumerate(rows):
        kept = [max(1e-4, 1 - row["layers"][name]["sparsity"]) for name in layers]
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(layers))]
        ax.bar(xs, kept, width=width, label=row["method"])
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(
        [
            f"{name}\n({row_total:,} w)"
            for name, row_total in zip(layers, rows[0]["layer_sizes"], strict=True)
        ],
        fontsize=8,
    )
    ax.set_ylabel("fraction of weights kept (log)")
    ax.set_title("LeNet-5 / MNIST: weights kept per layer by each method")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_residuals(history: dict, path: Path) -> None:
    """ADMM's ||W - Z|| / ||W|| at every Z-step, one line per ADMM method (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {k: [h for h in v if "relative_residual" in h] for k, v in history.items()}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in runs.items():
        ax.plot([h["epoch"] + 1 for h in rows], [h["relative_residual"] for h in rows], "o-",
                label=name)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("ADMM epoch")
    ax.set_ylabel("||W - Z|| / ||W||")
    ax.set_title("ADMM convergence (rho and ratio step up at stage boundaries)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(rows: Sequence[dict], dense: dict, path: Path) -> None:
    lines = [
        "# LeNet-5 / MNIST pruning results",
        "",
        f"Dense: top-1 {100 * dense['accuracy']:.2f}% ({dense['weights_total']:,} conv+fc "
        f"weights; {dense['minutes']:.1f} min; .weights file {dense['file_bytes']:,} bytes). "
        f"Every method: {dense['budget_epochs']} epochs from the dense weights.",
        "",
        "| method | target ratio | sparsity (targets) | sparsity (all weights) | compression "
        "| top-1 % | dense top-1 % | delta (points) | minutes | dense .weights bytes "
        "| sparse file bytes | size ratio | eval top-1 % | eval sparsity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(
                f"| {r['method']} | {r['target_ratio']} | error: {r['error']} |" + " |" * 11
            )
            continue
        ratio = "-" if r["target_ratio"] is None else f"{r['target_ratio']}"
        lines.append(
            f"| {r['method']} | {ratio} | {100 * r['sparsity']:.2f}% "
            f"| {100 * r['weights_sparsity']:.2f}% | {r['compression']:.1f}x "
            f"| {100 * r['accuracy']:.2f} | {100 * r['dense_accuracy']:.2f} "
            f"| {100 * (r['accuracy'] - r['dense_accuracy']):+.2f} | {r['minutes']:.1f} "
            f"| {r['file_bytes_dense']:,} | {r['file_bytes_sparse']:,} "
            f"| {r['file_bytes_dense'] / r['file_bytes_sparse']:.1f}x "
            f"| {100 * r['eval']['top1']:.2f} | {100 * r['eval']['sparsity']:.2f}% |"
        )
    lines += [
        "",
        "sparsity (targets): zeros among the weights the method was allowed to prune; "
        "sparsity (all weights): zeros among all conv+fc weights; compression: all conv+fc "
        "weights / non-zero ones; eval: what `yolo-prune eval` reports for the saved sparse file.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MNIST folder (idx .gz files)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--recipe", type=Path, default=ROOT / "cfg" / "recipes" / "lenet5.yaml")
    ap.add_argument("--methods", nargs="*", help="run only these method names")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--steps-per-epoch", type=int, help="cut epochs short (smoke test; numbers meaningless)"
    )
    ap.add_argument("--dense", type=Path, help="reuse a dense state dict instead of training")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    # Denormal floats (tiny weights after decay, Adam moments) slow CPU kernels ~10x.
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    t_script = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    recipe = load_recipe(args.recipe)
    train_cfg = recipe["train"]
    cfg_path = ROOT / recipe["model"]
    budget = int(train_cfg["budget_epochs"])
    methods = [m for m in recipe["methods"] if not args.methods or m["name"] in args.methods]
    for m in methods:
        spent = method_epochs(m["config"])
        if spent != budget:
            raise SystemExit(f"{m['name']}: spends {spent} epochs, the budget is {budget}")

    x_all, y_all = mnist_tensors(args.data, split="train")
    x_test, y_test = mnist_tensors(args.data, split="test")
    n_val = int(train_cfg["val_size"])
    x_train, y_train = x_all[:-n_val], y_all[:-n_val]
    x_val, y_val = x_all[-n_val:], y_all[-n_val:]
    batches = ShuffledBatches(
        x_train,
        y_train,
        batch_size=int(train_cfg["batch_size"]),
        shift=int(train_cfg["shift"]),
        seed=args.seed,
    )
    steps_per_epoch = args.steps_per_epoch or len(batches)

    def accuracy(model, x, y) -> float:
        return evaluate_accuracy(model, tensor_batches(x, y, batch_size=1000)).value

    def make_fit(model):
        phases = train_cfg["phases"]

        def fit(phase: str, epochs: int, hooks: Sequence[Hook]) -> None:
            key = phase if phase in phases else phase.split("-")[0]
            shift = train_cfg["shift"] if phase == "dense" else train_cfg.get("prune_shift")
            batches.shift = int(train_cfg["shift"] if shift is None else shift)
            setting = phases.get(key, phases["default"])
            opt = torch.optim.Adam(model.parameters(), lr=float(setting["lr"]))
            extra: list[Hook] = [LossLogHook()]
            if setting.get("schedule", "cosine") == "cosine":
                extra.append(CosineLR(opt, epochs * steps_per_epoch))
            # Pruning hooks first: the mask hook must see the step before anything reads it.
            trainer = Trainer(
                model,
                opt,
                cross_entropy_loss,
                hooks=[*hooks, *extra],
                max_steps_per_epoch=args.steps_per_epoch,
            )
            t = time.perf_counter()
            trainer.fit(batches, epochs=epochs)
            log.info(
                "phase %s: %d epochs in %.1f min, val top-1 %.4f",
                phase,
                epochs,
                (time.perf_counter() - t) / 60,
                accuracy(model, x_val, y_val),
            )

        return fit

    # --- dense ------------------------------------------------------------------------------
    model = Darknet.from_cfg(cfg_path)
    t0 = time.perf_counter()
    if args.dense:
        model.load_state_dict(torch.load(args.dense, map_location="cpu", weights_only=True))
    else:
        dense_phases = {"default": {"lr": train_cfg["lr"], "schedule": "cosine"}}
        saved_phases = train_cfg["phases"]
        train_cfg["phases"] = dense_phases
        make_fit(model)("dense", int(train_cfg["dense_epochs"]), [])
        train_cfg["phases"] = saved_phases
    dense_minutes = (time.perf_counter() - t0) / 60
    dense_state = copy.deepcopy(model.state_dict())
    torch.save(dense_state, out / "dense.pt")
    model.save_weights(out / "dense.weights")
    dense_acc = accuracy(model, x_test, y_test)
    names = weight_names(model)
    dense_info = {
        "accuracy": dense_acc,
        "val_accuracy": accuracy(model, x_val, y_val),
        "minutes": dense_minutes,
        "weights_total": param_stats(model, names).total,
        "params_total": param_stats(model).total,
        "file_bytes": (out / "dense.weights").stat().st_size,
        "budget_epochs": budget,
    }
    log.info("dense: test top-1 %.4f", dense_acc)

    # --- methods ----------------------------------------------------------------------------
    rows, history = [], {}
    for entry in methods:
        name, cfg = entry["name"], entry["config"]
        model.load_state_dict(dense_state)
        log.info("=== %s (%s) ===", name, entry["method"])
        t = time.perf_counter()
        row = {"method": name, "kind": entry["method"], "target_ratio": target_ratio(cfg)}
        try:
            result = build_pruner(entry["method"], cfg).run(
                model, fit=make_fit(model), evaluate=lambda: accuracy(model, x_val, y_val)
            )
        except Exception as exc:  # a method failing is a result, not the end of the table
            log.exception("%s failed", name)
            row.update(error=str(exc), minutes=(time.perf_counter() - t) / 60)
            rows.append(row)
            continue
        minutes = (time.perf_counter() - t) / 60
        sparse_path = out / f"{name}.sparse"
        save_sparse(sparse_path, model, meta={"cfg": model.cfg_text(), "method": name})
        model.save_weights(out / f"{name}.weights")
        targets = list(result.masks)
        weights = param_stats(model, names)
        row.update(
            projection=getattr(cfg, "projection", None)
            or {"deep-compression": "threshold", "soft-filter": "filter"}[entry["method"]],
            sparsity=param_stats(model, targets).sparsity,
            mask_sparsity=result.sparsity,
            weights_sparsity=weights.sparsity,
            weights_nonzero=weights.nonzero,
            compression=weights.compression,
            accuracy=accuracy(model, x_test, y_test),
            dense_accuracy=dense_acc,
            minutes=minutes,
            file_bytes_dense=dense_info["file_bytes"],
            file_bytes_sparse=sparse_path.stat().st_size,
            targets=targets,
            layers={
                n: {"total": s.total, "nonzero": s.nonzero, "sparsity": s.sparsity}
                for n, s in layer_stats(model, names).items()
            },
            layer_sizes=[s.total for s in layer_stats(model, names).values()],
        )
        row["eval"] = run_cli_eval(cfg_path, sparse_path, args.data, out / f"{name}.eval.json")
        rows.append(row)
        history[name] = result.history
        log.info(
            "%s: sparsity %.4f (targets) %.4f (all weights), top-1 %.4f (dense %.4f), %.1f min",
            name,
            row["sparsity"],
            row["weights_sparsity"],
            row["accuracy"],
            dense_acc,
            minutes,
        )
        # keep partial results on disk as the run goes
        (out / "results.json").write_text(
            json.dumps({"dense": dense_info, "rows": rows}, indent=2, default=str)
        )

    dense_info["script_minutes"] = (time.perf_counter() - t_script) / 60
    (out / "results.json").write_text(
        json.dumps({"dense": dense_info, "rows": rows}, indent=2, default=str)
    )
    (out / "history.json").write_text(json.dumps(history, indent=1, default=str))
    write_markdown(rows, dense_info, out / "results.md")
    ok_rows = [r for r in rows if not r.get("error")]
    if ok_rows:
        plot_layers(ok_rows, names, out / "layer_sparsity.png")
    plot_residuals(history, out / "admm_residual.png")
    log.info("done in %.1f min; results in %s", dense_info["script_minutes"], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
