#!/usr/bin/env python
"""A classifier (LeNet-5 / MNIST, ResNet-56 / CIFAR-10): train it dense, then every pruning
method from the same dense weights at the same budget.

    python scripts/prune_classifier.py --data ../shared/data/mnist --out runs/lenet5
    python scripts/prune_classifier.py --data ../shared/data/cifar10 --out runs/resnet56 \
        --device cuda [--amp]

The dataset is recognised from the --data folder: MNIST (the idx ``.gz`` files) or CIFAR-10 (the
JPEG tarballs, see :mod:`yolo_prune.data.cifar10`). The recipe defaults to
``cfg/recipes/lenet5.yaml`` for MNIST and ``cfg/recipes/resnet56.yaml`` for CIFAR-10 (model cfg,
training settings, one entry per method). Training images get a random translation of up to
``train.shift`` pixels with zero padding (for CIFAR-10 this is the usual "pad 4, random 32x32
crop") and, with ``train.flip: true``, a random horizontal flip. ``train.optimizer`` is ``adam``
(default) or ``sgd`` (with ``momentum``, ``weight_decay``, ``nesterov``); a phase entry may
override any of them. ``train.normalize: {mean: [...], std: [...]}`` normalises each channel;
the saved models then expect normalised input, which ``yolo-prune eval`` does not give, so its
cross-check is skipped.

Runtime (ResNet-56 recipe: 160 dense + 4 x 60 method epochs of 45,000 images): see the
recipe's header for what was measured on CPU and the GPU estimate.

Writes under --out:

* ``dense.weights`` / ``dense.sparse``: the dense model (Darknet format / sparse format);
* ``<method>.sparse`` (and ``<method>.weights``): each pruned model;
* ``results.json`` and ``results.md``: a row per method (target ratio, measured sparsity of the
  pruned targets and of all conv+fc weights, test accuracy, dense accuracy, minutes, file sizes)
  plus the figures ``yolo-prune eval`` reports for each saved model;
* ``layer_sparsity.png``: which layers each method pruned; ``admm_residual.png``: ADMM's
  ``||W - Z|| / ||W||`` per Z-step;
* ``history.json``: per-epoch/round figures of each method (ADMM's ||W - Z|| per layer, ...).

Every method starts from the same dense weights and trains ``budget_epochs`` epochs in all.
``yolo-prune prune`` handles detectors only, so the training loop glue for classifiers lives here.
Smoke runs: ``--max-images N --epochs-scale 0.01 --steps-per-epoch K`` (numbers meaningless).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
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
from yolo_prune.data.cifar10 import cifar10_tensors, is_cifar10_dir
from yolo_prune.data.mnist import is_mnist_dir, mnist_tensors
from yolo_prune.engine import Hook, LossLogHook, Trainer, cross_entropy_loss
from yolo_prune.eval.accuracy import evaluate_accuracy, tensor_batches
from yolo_prune.eval.profile import layer_stats, param_stats, weight_names
from yolo_prune.prune import build_pruner, load_recipe, save_sparse
from yolo_prune.prune.admm import ADMMConfig
from yolo_prune.prune.magnitude import DeepCompressionConfig, MagnitudeConfig
from yolo_prune.prune.soft_filter import SoftFilterConfig

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("prune_classifier")

# dataset name -> (loader of (images float [N, C, H, W] in [0, 1], labels int64 [N]), recipe,
# whether the loader gives the images sorted by class)
DATASETS = {
    "MNIST": (mnist_tensors, "lenet5.yaml", False),
    "CIFAR-10": (cifar10_tensors, "resnet56.yaml", True),  # tarball members in path order
}
SPLIT_SEED = 0  # the fixed shuffle of class-sorted data: the same val split for every --seed


def dataset_of(root: Path) -> str:
    """``MNIST`` or ``CIFAR-10``, from the files in ``root``."""
    if is_mnist_dir(root):
        return "MNIST"
    if is_cifar10_dir(root):
        return "CIFAR-10"
    raise SystemExit(
        f"--data {root}: neither MNIST (t10k-images-idx3-ubyte.gz, ...) nor CIFAR-10 "
        "(cifar10_jpg_train.tar.gz, cifar10_jpg_test.tar.gz) is there"
    )


def load_splits(
    root: Path, dataset: str, *, val_size: int, max_images: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``train``, ``val`` (the last ``val_size`` training images) and ``test`` of ``dataset``.

    Class-sorted data (CIFAR-10) is shuffled first with a fixed seed, or the held-out images
    would all be trucks. ``max_images`` keeps the first N images of each split.
    """
    load_split, _, class_sorted = DATASETS[dataset]
    x_all, y_all = load_split(root, split="train")
    x_test, y_test = load_split(root, split="test")
    if not 0 < val_size < len(x_all):
        raise SystemExit(f"train.val_size {val_size}: the training split has {len(x_all)} images")
    if class_sorted:
        gen = torch.Generator().manual_seed(SPLIT_SEED)
        perm = torch.randperm(len(x_all), generator=gen)
        x_all, y_all = x_all[perm], y_all[perm]
        perm = torch.randperm(len(x_test), generator=gen)
        x_test, y_test = x_test[perm], y_test[perm]
    splits = {
        "train": (x_all[:-val_size], y_all[:-val_size]),
        "val": (x_all[-val_size:], y_all[-val_size:]),
        "test": (x_test, y_test),
    }
    if max_images:
        splits = {k: (x[:max_images], y[:max_images]) for k, (x, y) in splits.items()}
    return splits


class ShuffledBatches:
    """Epochs of shuffled in-memory batches, augmented.

    Each image is translated by up to ``shift`` px in x and y, zero-filled (the same as padding
    by ``shift`` and cropping at random), then flipped left-right with probability 1/2 if
    ``flip``, then normalised per channel if ``mean``/``std`` are given. Random numbers come from
    a CPU generator seeded with ``seed`` in a fixed order (permutation, dy, dx, flips), so a
    seed gives the same batches on any device; without ``flip`` no flip numbers are drawn.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shift: int,
        seed: int,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shift, self.flip = batch_size, shift, flip
        self.gen = torch.Generator().manual_seed(seed)
        self.norm = None if mean is None else channel_stats(mean, std, images)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def _translate(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shift
        b, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (b,), generator=self.gen).to(x.device)
        dx = torch.randint(0, 2 * s + 1, (b,), generator=self.gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, chan, rows, cols]

    def _flip(self, x: torch.Tensor) -> torch.Tensor:
        flipped = torch.rand(len(x), generator=self.gen).to(x.device) < 0.5
        return torch.where(flipped[:, None, None, None], x.flip(-1), x)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (float [B, C, H, W]) translated, flipped and normalised as configured."""
        if self.shift:
            x = self._translate(x)
        if self.flip:
            x = self._flip(x)
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.images), generator=self.gen).to(self.images.device)
        for i in range(0, len(perm), self.batch_size):
            idx = perm[i : i + self.batch_size]
            yield self.augment(self.images[idx]), self.labels[idx]


def channel_stats(
    mean: Sequence[float], std: Sequence[float] | None, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` as ``[1, C, 1, 1]`` tensors on ``images``' device, checked against it."""
    c = images.shape[1]
    if std is None or len(mean) != c or len(std) != c or min(std) <= 0:
        raise SystemExit(
            f"train.normalize: expected mean and std with {c} entries each (std > 0), "
            f"got mean={mean} std={std}"
        )
    shape = (1, c, 1, 1)
    as_t = functools.partial(torch.tensor, dtype=images.dtype, device=images.device)
    return as_t(list(mean)).view(shape), as_t(list(std)).view(shape)


def make_optimizer(params: Iterator[torch.nn.Parameter], setting: dict) -> torch.optim.Optimizer:
    """Adam (default) or SGD from a phase's ``setting`` (lr, optimizer, momentum, ...)."""
    kind = str(setting.get("optimizer", "adam")).lower()
    lr = float(setting["lr"])
    wd = float(setting.get("weight_decay", 0.0))
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=float(setting.get("momentum", 0.9)),
            weight_decay=wd,
            nesterov=bool(setting.get("nesterov", False)),
        )
    raise SystemExit(f"train.optimizer {kind!r}; choose adam or sgd")


OPTIM_KEYS = ("optimizer", "momentum", "weight_decay", "nesterov")  # keys of make_optimizer
EPOCH_FIELDS = ("epochs", "retrain_epochs", "epochs_per_round")  # method config fields


def scale_epochs(cfg, scale: float):
    """``cfg`` with every epoch count multiplied by ``scale`` (at least 1; ADMM: >= stages)."""
    if scale == 1:
        return cfg
    changes = {}
    for f in dataclasses.fields(cfg):
        if f.name in EPOCH_FIELDS and getattr(cfg, f.name) > 0:
            changes[f.name] = max(1, round(getattr(cfg, f.name) * scale))
    if "epochs" in changes and hasattr(cfg, "stages"):
        changes["epochs"] = max(changes["epochs"], cfg.stages)
    return dataclasses.replace(cfg, **changes)


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


def run_cli_eval(cfg_path: Path, weights: Path, data: Path, out: Path, *, device: str) -> dict:
    """``yolo-prune eval`` in a subprocess, exactly as a user would run it (whole test split)."""
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
        "--device",
        device,
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def plot_layers(rows: Sequence[dict], layers: Sequence[str], path: Path, *, title: str) -> None:
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
        rotation=90 if len(layers) > 12 else 0,  # ResNet-56: 57 layers
    )
    ax.set_ylabel("fraction of weights kept (log)")
    ax.set_title(f"{title}: weights kept per layer by each method")
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
        f"# {dense['title']} pruning results",
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
            + (
                f"| {100 * r['eval']['top1']:.2f} | {100 * r['eval']['sparsity']:.2f}% |"
                if r.get("eval")
                else "| - | - |"
            )
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
    ap.add_argument(
        "--data", type=Path, required=True, help="MNIST (idx .gz files) or CIFAR-10 folder"
    )
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument(
        "--recipe", type=Path, help="default: cfg/recipes/lenet5.yaml (MNIST), resnet56.yaml"
    )
    ap.add_argument("--methods", nargs="*", help="run only these method names")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--steps-per-epoch", type=int, help="cut epochs short (smoke test; numbers meaningless)"
    )
    ap.add_argument(
        "--max-images", type=int, help="use at most N train, N val and N test images (smoke)"
    )
    ap.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply every epoch count of the recipe, at least 1 (smoke; budget not checked)",
    )
    ap.add_argument("--dense", type=Path, help="reuse a dense state dict instead of training")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here")
    if args.epochs_scale <= 0:
        raise SystemExit(f"--epochs-scale {args.epochs_scale}; expected a positive number")
    device = torch.device(args.device)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    # Denormal floats (tiny weights after decay, Adam moments) slow CPU kernels ~10x.
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    t_script = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    dataset = dataset_of(args.data)
    default_recipe = DATASETS[dataset][1]
    recipe = load_recipe(args.recipe or ROOT / "cfg" / "recipes" / default_recipe)
    train_cfg = recipe["train"]
    cfg_path = ROOT / recipe["model"]
    title = f"{cfg_path.stem} / {dataset}"
    budget = max(1, round(int(train_cfg["budget_epochs"]) * args.epochs_scale))
    dense_epochs = max(1, round(int(train_cfg["dense_epochs"]) * args.epochs_scale))
    methods = [m for m in recipe["methods"] if not args.methods or m["name"] in args.methods]
    for m in methods:
        m["config"] = scale_epochs(m["config"], args.epochs_scale)
        spent = method_epochs(m["config"])
        if spent != budget and args.epochs_scale == 1:
            raise SystemExit(f"{m['name']}: spends {spent} epochs, the budget is {budget}")
    if args.epochs_scale != 1 and methods:  # rounding: report what the methods really spend
        budget = max(method_epochs(m["config"]) for m in methods)

    splits = load_splits(
        args.data, dataset, val_size=int(train_cfg["val_size"]), max_images=args.max_images
    )
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        (x.to(device), y.to(device)) for x, y in (splits["train"], splits["val"], splits["test"])
    )
    norm = train_cfg.get("normalize")
    batches = ShuffledBatches(
        x_train,
        y_train,
        batch_size=int(train_cfg["batch_size"]),
        shift=int(train_cfg["shift"]),
        seed=args.seed,
        flip=bool(train_cfg.get("flip", False)),
        mean=norm and norm["mean"],
        std=norm and norm.get("std"),
    )
    if batches.norm is not None:  # evaluation sees the same normalised input
        x_val = (x_val - batches.norm[0]) / batches.norm[1]
        x_test = (x_test - batches.norm[0]) / batches.norm[1]
    steps_per_epoch = min(args.steps_per_epoch or len(batches), len(batches))
    # optimizer keys of train: that every phase inherits unless it sets its own
    optim_keys = {k: train_cfg[k] for k in OPTIM_KEYS if k in train_cfg}

    def accuracy(model, x, y) -> float:
        batches_ = tensor_batches(x, y, batch_size=1000)
        return evaluate_accuracy(model, batches_, device=device).value

    def make_fit(model):
        phases = train_cfg["phases"]

        def fit(phase: str, epochs: int, hooks: Sequence[Hook]) -> None:
            key = phase if phase in phases else phase.split("-")[0]
            shift = train_cfg["shift"] if phase == "dense" else train_cfg.get("prune_shift")
            batches.shift = int(train_cfg["shift"] if shift is None else shift)
            if phase == "dense":
                setting = {"lr": train_cfg["lr"], "schedule": "cosine"}
            else:
                setting = phases.get(key, phases["default"])
            setting = {**optim_keys, **setting}
            opt = make_optimizer(model.parameters(), setting)
            extra: list[Hook] = [LossLogHook()]
            if setting.get("schedule", "cosine") == "cosine":
                extra.append(CosineLR(opt, epochs * steps_per_epoch))
            # Pruning hooks first: the mask hook must see the step before anything reads it.
            trainer = Trainer(
                model,
                opt,
                cross_entropy_loss,
                hooks=[*hooks, *extra],
                device=device,
                max_steps_per_epoch=args.steps_per_epoch,
                amp=args.amp,
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
    model = Darknet.from_cfg(cfg_path).to(device)
    t0 = time.perf_counter()
    if args.dense:
        model.load_state_dict(torch.load(args.dense, map_location=device, weights_only=True))
    else:
        make_fit(model)("dense", dense_epochs, [])
    dense_minutes = (time.perf_counter() - t0) / 60
    dense_state = copy.deepcopy(model.state_dict())
    torch.save({k: v.cpu() for k, v in dense_state.items()}, out / "dense.pt")
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
        "dense_epochs": dense_epochs,
        "title": title,
        "device": str(device),
        "train_images": len(x_train),
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
        if batches.norm is None:
            row["eval"] = run_cli_eval(
                cfg_path, sparse_path, args.data, out / f"{name}.eval.json", device=args.device
            )
        else:  # yolo-prune eval feeds [0, 1] pixels: its figure would mean nothing
            row["eval"] = None
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
        plot_layers(ok_rows, names, out / "layer_sparsity.png", title=title)
    plot_residuals(history, out / "admm_residual.png")
    log.info("done in %.1f min; results in %s", dense_info["script_minutes"], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
