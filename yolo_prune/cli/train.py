"""``yolo-prune train``: fine-tune a Darknet detector on a COCO JSON or YOLO txt dataset.

    yolo-prune train --cfg C --weights W --data TRAIN --val VAL --epochs N --out DIR [--resume]

Writes ``DIR/last.pt`` (checkpoint, each epoch and every ``--checkpoint-every`` steps),
``DIR/metrics.json`` and ``DIR/final.weights``. ``--resume`` continues from ``DIR/last.pt``.
Run under ``torchrun --nproc_per_node=N`` for data parallel training (gloo on CPU, NCCL on GPU;
``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from yolo_prune.cli.common import add_progress_argument
from yolo_prune.data.augment import AugmentConfig
from yolo_prune.detect.train import OPTIMIZERS, TrainConfig, train_detector
from yolo_prune.engine.distributed import dist_info
from yolo_prune.errors import ConfigError, require_file
from yolo_prune.eval.detection import build_validator


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a Darknet detector",
        description="Fine-tune a Darknet detector with the YOLO loss; resumable checkpoints.",
    )
    p.add_argument("--cfg", type=Path, required=True, help="Darknet .cfg")
    p.add_argument("--weights", type=Path, help="Darknet .weights to start from (default: random)")
    p.add_argument("--data", type=Path, required=True, help="training dataset folder")
    p.add_argument("--val", type=Path, help="validation dataset folder (AP/AP50 each epoch)")
    p.add_argument("--split", help="training split (default: the first train* split)")
    p.add_argument("--val-split", help="validation split (default: the first val* split)")
    p.add_argument("--epochs", type=int, required=True, help="epochs in all")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--size", type=int, help="input side, a multiple of 32 (default: the cfg's)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step per process")
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="default: sgd")
    p.add_argument("--lr", type=float, default=1e-3, help="base learning rate (default 1e-3)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum / Adam beta1")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="on conv weights")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear LR warm-up")
    p.add_argument("--bn-momentum", type=float, help="batch-norm momentum (default: 0.01)")
    p.add_argument("--no-ema", action="store_true", help="do not keep an EMA of the weights")
    p.add_argument("--no-augment", action="store_true", help="no flips, HSV, scale/translate")
    p.add_argument("--mosaic", type=float, default=0.0, help="fraction of 4-image mosaics")
    p.add_argument(
        "--letterbox",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the aspect ratio, pad with grey (default: the cfg's letter_box)",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle/augmentation/init seed")
    p.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also save every N steps")
    p.add_argument("--max-images", type=int, help="train on the first N images only")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA)")
    add_progress_argument(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    require_file(args.cfg, "cfg file")
    if args.weights is not None:
        require_file(args.weights, "weights file")
    try:
        return TrainConfig(
            cfg=args.cfg,
            data=args.data,
            out=args.out,
            epochs=args.epochs,
            weights=args.weights,
            val=args.val,
            split=args.split,
            val_split=args.val_split,
            size=args.size,
            batch_size=args.batch_size,
            accumulate=args.accumulate,
            optimizer=args.optimizer,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            bn_momentum=args.bn_momentum,
            ema=not args.no_ema,
            augment=None if args.no_augment else AugmentConfig(mosaic=args.mosaic),
            letterbox=args.letterbox,
            seed=args.seed,
            deterministic=args.deterministic,
            workers=args.workers,
            val_every=args.val_every,
            checkpoint_every=args.checkpoint_every,
            max_images=args.max_images,
            resume=args.resume,
            device=args.device,
            amp=args.amp,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    validate = None
    if config.val is not None:
        validate = build_validator(config.val, split=config.val_split, size=config.size)
    result = train_detector(config, validate=validate)
    if dist_info(config.device).is_main:  # under torchrun, rank 0 alone prints
        for row in result["history"]:
            print(json.dumps(row))
        print(f"final weights: {result['final_weights']}")
    return 0
