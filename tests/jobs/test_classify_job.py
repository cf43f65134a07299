"""Classifiers through the same prune and sweep jobs as detectors: LeNet-5 on 600 real MNIST
images (the dense model trained by the job), ResNet-56 on a tiny CIFAR-10 (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from yolo_prune.cli.main import main
from yolo_prune.darknet import Darknet
from yolo_prune.jobs.models import load_model

LENET_RECIPE = """
model: cfg/lenet5.cfg
method: admm-global
dense_epochs: 3
refit: 0
train: {batch_size: 50, optimizer: adam, shift: 1, val_size: 100}
phases:
  dense: {lr: 0.002, shift: 0, schedule: cosine}
  admm: {lr: 0.001, schedule: constant}
  default: {lr: 0.002, schedule: cosine}
methods:
  - {name: admm-global, method: admm, ratio: 0.9, epochs: 2, stages: 1, rho: 0.01,
     retrain_epochs: 1, targets: {protect: none},
     policy: {first_cap: 0.5, last_cap: 1.0, backbone_end: layers.2}}
  - {name: magnitude, method: magnitude, ratio: 0.8, epochs: 1, targets: {protect: none}}
"""


@pytest.fixture
def lenet_recipe(tmp_path):
    path = tmp_path / "lenet5.yaml"
    path.write_text(LENET_RECIPE)
    return path


def test_lenet5_prune_trains_dense_prunes_and_reports_top1(
    small_mnist, lenet_recipe, repo_cfg, tmp_path, capsys
):
    out = tmp_path / "p"
    code = main(["prune", "--cfg", str(repo_cfg / "lenet5.cfg"), "--data", str(small_mnist),
                 "--recipe", str(lenet_recipe), "--out", str(out), "--no-latency",
                 "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "classification" and report["metric"] == "top1"
    assert report["dense_training"]["epochs"] == 3
    assert report["dense"]["top1"] > 0.7  # 3 epochs on 500 images learn the digits
    assert report["dense"]["images"] == 300  # the test split, not the held-out val
    assert abs(report["target_sparsity"] - 0.9) < 1e-3  # the global ratio, to the weight
    first = next(r for r in report["layers"] if r["name"] == "layers.0.conv.weight")
    assert first["pruned"] <= 0.5 + 1e-9  # the conservative cap of the first conv
    assert [p["phase"] for p in report["phases"]] == ["admm", "retrain"]
    assert "top-1 (%)" in printed and "AP50" not in printed
    # the files a user gets, and `yolo-prune eval` of the shipped sparse file agrees
    for name in ("dense.weights", "pruned.weights", "pruned.sparse", "layer_sparsity.png"):
        assert (out / name).is_file(), name
    assert main(["eval", "--weights", str(out / "pruned.sparse"), "--data", str(small_mnist),
                 "--out", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert figures["top1"] == pytest.approx(report["pruned"]["top1"], abs=1e-9)
    assert figures["sparsity"] == pytest.approx(report["pruned"]["sparsity"], abs=1e-9)
    # the dense model the job trained is the one the report scores
    dense, _ = load_model(repo_cfg / "lenet5.cfg", out / "dense.weights")
    assert isinstance(dense, Darknet) and torch.count_nonzero(dense.layers[0].conv.weight) > 0


def test_a_classifier_recipe_with_distill_trains_against_the_frozen_dense_model(
    small_mnist, lenet_recipe, repo_cfg, tmp_path, monkeypatch
):
    import yolo_prune.classify.train as classify_train

    seen = []
    real = classify_train.distilled_cross_entropy

    def spy(teacher, weight, labels=1.0):
        loss = real(teacher, weight, labels)
        seen.append((teacher, weight, labels, teacher.training))  # eval mode for the loss
        return loss

    monkeypatch.setattr(classify_train, "distilled_cross_entropy", spy)
    out = tmp_path / "kd"
    code = main(["prune", "--cfg", str(repo_cfg / "lenet5.cfg"), "--data", str(small_mnist),
                 "--recipe", str(lenet_recipe), "--method", "magnitude", "--set", "distill=0.5",
                 "--set", "methods.magnitude.labels=0", "--out", str(out), "--no-latency",
                 "--no-progress", "--no-deploy"])  # fmt: skip
    assert code == 0
    # the dense phase trains on labels only; the fine-tuning after the cut has the teacher
    # alone (the variant's labels=0)
    assert [(w, lab, training) for _, w, lab, training in seen] == [(0.5, 0.0, False)]
    teacher = seen[0][0]
    dense, _ = load_model(repo_cfg / "lenet5.cfg", out / "dense.weights")
    for a, b in zip(teacher.state_dict().values(), dense.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the dense model, never trained further
    assert "distill: 0.5" in (out / "config.yaml").read_text()
    assert "labels: 0.0" in (out / "config.yaml").read_text()


def test_labels_zero_without_a_teacher_is_one_line_before_any_work(
    small_mnist, lenet_recipe, repo_cfg, tmp_path, capsys
):
    out = tmp_path / "none"
    code = main(["prune", "--cfg", str(repo_cfg / "lenet5.cfg"), "--data", str(small_mnist),
                 "--recipe", str(lenet_recipe), "--method", "magnitude", "--set", "labels=0",
                 "--out", str(out), "--no-latency", "--no-progress"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels=0 and no distill weight leave nothing to learn" in err[0]
    assert not out.exists()


def test_lenet5_sweep_runs_each_variant_at_its_own_ratio_from_one_dense_model(
    small_mnist, lenet_recipe, repo_cfg, tmp_path, capsys
):
    out = tmp_path / "s"
    args = ["sweep", "--cfg", str(repo_cfg / "lenet5.cfg"), "--data", str(small_mnist),
            "--recipe", str(lenet_recipe), "--methods", "all", "--ratios", "own",
            "--out", str(out), "--no-latency", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["metric"] == "top1"
    rows = {r["method"]: r for r in summary["points"]}
    assert set(rows) == {"admm-global", "magnitude"}
    assert rows["admm-global"]["ratio"] == 0.9 and rows["magnitude"]["ratio"] == 0.8
    assert all(r["top1"] is not None for r in rows.values())
    for method in rows:  # every point starts from the sweep's one dense model
        report = json.loads((out / "points" / method / "own" / "report.json").read_text())
        assert report["weights"] == str(out / "dense.weights")
        assert report["dense_training"] is None
    assert "top-1 %" in (out / "sweep.md").read_text()
    assert not list(out.rglob("last.pt"))  # the dense phase's and the points' checkpoints
    files = [out / "dense.weights", *sorted(out.glob("points/*/own/report.json"))]
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main(args) == 0  # resumed: the dense model and every point are read back
    assert [f.stat().st_mtime_ns for f in files] == stamps


RESNET_RECIPE = """
model: cfg/resnet56.cfg
method: admm-global
dense_epochs: 1
budget_epochs: 2
refit: 0
train: {batch_size: 8, shift: 4, flip: true, val_size: 8, optimizer: sgd, momentum: 0.9,
        weight_decay: 0.0005}
phases:
  dense: {lr: 0.1}
  admm: {lr: 0.01, schedule: constant}
  default: {lr: 0.01}
methods:
  - {name: admm-global, method: admm, ratio: 0.5, epochs: 1, stages: 1, retrain_epochs: 1,
     policy: {first_cap: 0.5, last_cap: 0.95, backbone_end: 27}}
"""


@pytest.mark.slow  # 20 s: ResNet-56 end to end; LeNet-5 covers the job in the default run
def test_resnet56_on_tiny_cifar10(tiny_cifar10, repo_cfg, tmp_path):
    recipe = tmp_path / "resnet56.yaml"
    recipe.write_text(RESNET_RECIPE)
    out = tmp_path / "out"
    assert main(["prune", "--cfg", str(repo_cfg / "resnet56.cfg"), "--data", str(tiny_cifar10),
                 "--recipe", str(recipe), "--out", str(out), "--no-latency",
                 "--no-progress"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["dense"]["images"] == 20
    assert abs(report["target_sparsity"] - 0.5) < 1e-3
    first = next(r for r in report["layers"] if r["name"] == "layers.0.conv.weight")
    assert first["pruned"] <= 0.5 + 1e-9
