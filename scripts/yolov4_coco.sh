#!/usr/bin/env bash
# YOLOv4 on COCO: AP50 against sparsity for global ADMM (ours), plain global ADMM and magnitude
# pruning (global and layer-wise), one CUDA GPU. Thin: it checks its arguments and runs
# `yolo-prune sweep` with cfg/recipes/yolov4.yaml (epochs, lr, ADMM stages live there).
#
#   scripts/yolov4_coco.sh COCO_TRAIN COCO_VAL [OUT] [extra yolo-prune sweep flags...]
#   scripts/yolov4_coco.sh /data/coco /data/coco runs/yolov4-coco --set train.workers=16
#
# Settings from the environment (defaults in brackets):
#   RATIOS   removal ratios                [0.3,0.5,0.7]
#   METHODS  variants of the recipe        [admm,admm-plain,magnitude,magnitude-layer]
#   WEIGHTS  dense weights: file or name   [yolov4: downloaded and checked by sha256 on first
#            use, which needs network; else give the path to yolov4.weights]
#   DEVICE   torch device                  [cuda]
#
# A COCO folder (COCO_TRAIN and COCO_VAL may be the same folder) holds one of the layouts that
# yolo_prune/data/coco.py reads; training uses its first train* split, evaluation its first
# val* split:
#   COCO JSON, official:  annotations/instances_train2017.json  train2017/*.jpg
#                         annotations/instances_val2017.json    val2017/*.jpg
#   COCO JSON:            annotations/instances_<split>.json    images/<split>/*.jpg
#   YOLO txt:             images/<split>/*.jpg                  labels/<split>/*.txt
#                         (class x_center y_center width height, normalised; COCO-80 classes)
#
# Outputs: OUT/sweep.md (the table), sweep.json, sweep.png (AP50 against sparsity), and a full
# `yolo-prune prune` folder per point under OUT/points/<method>/r<ratio>/. Run the same command
# again to resume: finished points are read back, not redone.
#
# Runtime: ESTIMATE, NOT MEASURED (no GPU was available when this script was written). Basis:
# one epoch of COCO train2017 (118k images) for yolov4 at 608x608 takes on the order of an hour
# on one A100 (published training logs), and every point here trains 12 epochs (admm variants:
# 6 ADMM + 6 retraining; magnitude: 12 fine-tuning; cfg/recipes/yolov4.yaml). 3 ratios x 4
# methods = 12 points = 144 epochs: about 6 days on one A100, plus val2017 evaluations (the
# dense model once, each point before and after). Try one point first:
#   RATIOS=0.5 METHODS=admm scripts/yolov4_coco.sh /data/coco /data/coco runs/try

set -euo pipefail

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 2 ]] || usage
train=$1
val=$2
out=${3:-runs/yolov4-coco}
shift $(($# < 3 ? $# : 3))

# Fail before importing torch or downloading 250 MB of weights.
for pair in "COCO_TRAIN:$train" "COCO_VAL:$val"; do
    what=${pair%%:*}
    dir=${pair#*:}
    if [[ ! -d $dir ]]; then
        echo "yolov4_coco.sh: $what '$dir': no such folder" >&2
        exit 2
    fi
    if ! compgen -G "$dir/annotations/instances_*.json" >/dev/null && [[ ! -d $dir/labels ]]; then
        echo "yolov4_coco.sh: $what '$dir': not a COCO folder; expected" \
            "annotations/instances_<split>.json (COCO JSON) or images/<split>/ with" \
            "labels/<split>/ (YOLO txt); see the header of $0" >&2
        exit 2
    fi
done

repo=$(cd "$(dirname "$0")/.." && pwd)
if command -v yolo-prune >/dev/null; then
    cli=(yolo-prune)
else
    cli=(python -m yolo_prune.cli.main)
fi

set -x
"${cli[@]}" sweep \
    --cfg "$repo/cfg/yolov4.cfg" \
    --weights "${WEIGHTS:-yolov4}" \
    --data "$train" \
    --val "$val" \
    --recipe "$repo/cfg/recipes/yolov4.yaml" \
    --ratios "${RATIOS:-0.3,0.5,0.7}" \
    --methods "${METHODS:-admm,admm-plain,magnitude,magnitude-layer}" \
    --device "${DEVICE:-cuda}" \
    --out "$out" \
    "$@"
