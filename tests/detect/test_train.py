"""Fine-tuning a detector: outputs written, SIGKILL + resume equals an uninterrupted run,
pruning masks stay exactly zero, a bad image does not end the run, a bad label is an error."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.data.augment import AugmentConfig
from yolo_prune.detect.train import TrainConfig, train_detector
from yolo_prune.engine.checkpoint import load_checkpoint
from yolo_prune.errors import ConfigError, DataError
from yolo_prune.eval.detection import build_validator

TINY_CFG = Path(__file__).resolve().parents[1] / "prune" / "tiny_detector.cfg"


@pytest.fixture(scope="module")
def tiny_data(coco8_two_classes) -> Path:
    """8 coco128 train images, their labels folded onto the tiny detector's 2 classes."""
    return coco8_two_classes


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        cfg=TINY_CFG,
        data=data,
        out=out,
        epochs=3,
        size=64,
        batch_size=2,
        lr=1e-3,
        warmup_epochs=1.0,
        augment=AugmentConfig(),
        deterministic=True,
        ema_tau=3.0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _validator(config: TrainConfig):
    """What ``yolo-prune train`` passes as ``validate`` for ``config.val``."""
    return build_validator(config.val, split=config.val_split, size=config.size)


def test_run_writes_checkpoint_metrics_and_weights(tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path, val=tiny_data, val_split="train")
    result = train_detector(config, validate=_validator(config))
    assert result["steps"] == 12
    assert [r["epoch"] for r in result["history"]] == [0, 1, 2]
    assert all(0.0 <= r["val_AP50"] <= 1.0 for r in result["history"])
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "metrics.json", "final.weights"}
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["epoch_done"]) == (2, 12, True)
    model = Darknet.from_cfg(TINY_CFG, size=64)
    model.load_weights(tmp_path / "final.weights")
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(value, result["ema"].state_dict()[name])
    assert not torch.are_deterministic_algorithms_enabled()


_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from yolo_prune.data.augment import AugmentConfig
from yolo_prune.detect.train import TrainConfig, train_detector
from yolo_prune.engine import Hook

class Kill(Hook):
    def after_step(self, state):
        if state.step == 6:  # epoch 1, third step of four; checkpoint of step 6 not yet written
            os.kill(os.getpid(), signal.SIGKILL)

config = TrainConfig(cfg=Path(sys.argv[1]), data=Path(sys.argv[2]), out=Path(sys.argv[3]),
    epochs=3, size=64, batch_size=2, lr=1e-3, warmup_epochs=1.0, augment=AugmentConfig(),
    deterministic=True, ema_tau=3.0, checkpoint_every=1)
train_detector(config, hooks=[Kill()])
"""


def test_sigkill_in_mid_epoch_then_resume_equals_uninterrupted(tiny_data, tmp_path):
    ref = train_detector(_config(tiny_data, tmp_path / "ref"))
    cut = tmp_path / "cut"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILLED_RUN),
            str(TINY_CFG),
            str(tiny_data),
            str(cut),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = load_checkpoint(cut / "last.pt")
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"], ckpt["epoch_done"]) == (1, 2, 6, False)
    resumed = train_detector(_config(tiny_data, cut, resume=True, checkpoint_every=1))
    assert resumed["steps"] == ref["steps"] == 12
    for which in ("model", "ema"):
        a, b = resumed[which].state_dict(), ref[which].state_dict()
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=f"{which} {name}")
    assert (cut / "final.weights").read_bytes() == (tmp_path / "ref" / "final.weights").read_bytes()


def test_pruning_masks_keep_pruned_weights_exactly_zero(tiny_data, tmp_path):
    from yolo_prune.prune.masks import MaskHook

    model = Darknet.from_cfg(TINY_CFG, size=64)
    torch.manual_seed(0)
    masks = {
        name: p.detach().abs() > p.detach().abs().median()
        for name, p in model.named_parameters()
        if p.ndim == 4
    }
    result = train_detector(
        _config(tiny_data, tmp_path, epochs=2, weight_decay=5e-3),
        model=model,
        hooks=[MaskHook(masks)],
    )
    saved = Darknet.from_cfg(TINY_CFG, size=64)
    saved.load_weights(tmp_path / "final.weights")
    ckpt = load_checkpoint(tmp_path / "last.pt")["model"]
    params = dict(saved.named_parameters())
    for name, keep in masks.items():
        assert torch.count_nonzero(params[name][~keep]) == 0, name
        assert torch.count_nonzero(ckpt[name][~keep]) == 0, name
        assert torch.count_nonzero(params[name][keep]) == int(keep.sum()), name
    assert result["steps"] == 8


_PRUNED_RUN = """
import os, signal, sys
from pathlib import Path
import torch
from yolo_prune.darknet import Darknet
from yolo_prune.engine import Hook
from yolo_prune.prune.admm import ADMMConfig, ADMMHook
from yolo_prune.prune.masks import MaskHook
from yolo_prune.prune.targets import select_targets

def build_hooks(kind, cfg):
    model = Darknet.from_cfg(cfg, size=64)  # names and shapes only (train_detector reseeds)
    names = select_targets(model)
    if kind == "admm":
        # Z/U every 3 steps and a new rho and ratio at each epoch end: the kill at step 6
        # lands between Z-steps, one stage change behind and one ahead.
        config = ADMMConfig(ratio=0.5, epochs=3, stages=3, ratios=(0.2, 0.4, 0.5),
                            rho=1e-2, update_every=3)
        return [ADMMHook(names, config)]
    params, gen = dict(model.named_parameters()), torch.Generator().manual_seed(1)
    return [MaskHook({n: torch.rand(params[n].shape, generator=gen) > 0.5 for n in names})]

class Kill(Hook):
    def after_step(self, state):
        if state.step == 6:  # epoch 1, third step of four; checkpoint of step 6 not yet written
            os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    from yolo_prune.data.augment import AugmentConfig
    from yolo_prune.detect.train import TrainConfig, train_detector

    kind, cfg, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    config = TrainConfig(cfg=cfg, data=data, out=out, epochs=3, size=64, batch_size=2, lr=1e-3,
        warmup_epochs=1.0, augment=AugmentConfig(), deterministic=True, ema_tau=3.0,
        checkpoint_every=1)
    train_detector(config, hooks=[*build_hooks(kind, cfg), Kill()])
"""


# ADMM's state in a resume is also checked by the whole prune job (tests/jobs/test_resume.py,
# SIGKILL in the ADMM phase), so only the mask hook runs here by default (7 s each)
@pytest.mark.parametrize("kind", [pytest.param("admm", marks=pytest.mark.slow), "mask"])
def test_sigkill_and_resume_of_a_pruning_run_equals_uninterrupted(tiny_data, tmp_path, kind):
    """Acceptance of issue 5 for pruning: the hooks' state (ADMM Z/U/rho/stage, masks) is in
    every checkpoint, so a run killed in mid-epoch and resumed ends where an uninterrupted
    run ends."""
    import runpy

    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_PRUNED_RUN))
    build_hooks = runpy.run_path(str(script))["build_hooks"]
    ref_hooks = build_hooks(kind, TINY_CFG)
    ref = train_detector(_config(tiny_data, tmp_path / "ref"), hooks=ref_hooks)
    cut = tmp_path / "cut"
    proc = subprocess.run(
        [sys.executable, str(script), kind, str(TINY_CFG), str(tiny_data), str(cut)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    saved = load_checkpoint(cut / "last.pt")
    assert (saved["epoch"], saved["epoch_step"], saved["epoch_done"]) == (1, 2, False)
    hooks = build_hooks(kind, TINY_CFG)
    resumed = train_detector(_config(tiny_data, cut, resume=True, checkpoint_every=1), hooks=hooks)

    assert resumed["steps"] == ref["steps"] == 12
    for which in ("model", "ema"):
        a, b = resumed[which].state_dict(), ref[which].state_dict()
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=f"{which} {name}")
    (hook,), (ref_hook,) = hooks, ref_hooks
    if kind == "admm":
        for which in ("Z", "U"):
            got, want = getattr(hook, which), getattr(ref_hook, which)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert (hook.rho, hook.ratio) == (ref_hook.rho, ref_hook.ratio) == (1.0, 0.5)
        # Z-steps at steps 2, 5, 8, 11 and at the two stage changes; 3 of them before the kill
        assert len(saved["hooks"]["ADMMHook:0"]["history"]) == 3
        assert len(hook.history) == len(ref_hook.history) == 6
        torch.testing.assert_close(hook.history, ref_hook.history, rtol=0, atol=1e-6)
    else:
        params = dict(resumed["model"].named_parameters())
        ema = dict(resumed["ema"].named_parameters())
        for name, keep in hook.masks.items():
            for p in (params[name], ema[name]):
                assert torch.count_nonzero(p.detach()[~keep]) == 0, name
                assert torch.count_nonzero(p.detach()[keep]) == int(keep.sum()), name
    assert (cut / "final.weights").read_bytes() == (tmp_path / "ref" / "final.weights").read_bytes()


def test_a_bad_label_stops_the_run_before_any_training(tiny_data, tmp_path):
    # Training reads labels with evaluation's reader and rule: a malformed line is an error
    # naming the file and line, not a silently smaller dataset.
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    labels = sorted((data / "labels" / "train").glob("*.txt"))
    labels[1].write_text("9 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=rf"^{labels[1].name}:1: class 9 is out of range"):
        train_detector(_config(data, tmp_path / "out", epochs=1))
    assert not (tmp_path / "out" / "last.pt").exists()


def test_a_bad_image_does_not_end_the_run(tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    images = sorted((data / "images" / "train").glob("*.jpg"))
    images[2].write_bytes(b"broken")
    with caplog.at_level(logging.WARNING):
        result = train_detector(_config(data, tmp_path / "out", epochs=1))
    assert result["steps"] == 4  # 8 images, batch 2: the next image stands in for the broken one
    assert images[2].name in caplog.text


_DDP_RUN = """
import sys
from pathlib import Path
import torch
from yolo_prune.detect.train import TrainConfig, train_detector
from yolo_prune.engine.distributed import distributed_session

cfg, data, out, batch, accumulate = sys.argv[1:6]
config = TrainConfig(cfg=Path(cfg), data=Path(data), out=Path(out), epochs=1, size=64,
    batch_size=int(batch), accumulate=int(accumulate), lr=1e-3, warmup_epochs=0.0,
    ema=False, deterministic=True, max_steps=2)
with distributed_session("cpu") as info:  # a library user sets the group up, once
    model = train_detector(config)["model"]
    # what each rank leaves training with, beside (not in) the output folder
    torch.save(model.state_dict(), Path(out).parent / f"{Path(out).name}-rank{info.rank}.pt")
"""


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tiny_data, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_DDP_RUN))
    common = [str(TINY_CFG), str(tiny_data)]
    one = subprocess.run(
        [sys.executable, str(script), *common, str(tmp_path / "one"), "2", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), *common, str(tmp_path / "two"), "2", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert {p.name for p in (tmp_path / "two").iterdir()} == {
        "last.pt",
        "metrics.json",
        "final.weights",
    }
    a, b = (
        load_checkpoint(tmp_path / "one" / "last.pt"),
        load_checkpoint(tmp_path / "two" / "last.pt"),
    )
    assert a["step"] == b["step"] == 2
    names = [n for n, _ in Darknet.from_cfg(TINY_CFG, size=64).named_parameters()]
    torch.manual_seed(0)  # train_detector's seed: the same random start
    start = Darknet.from_cfg(TINY_CFG, size=64).state_dict()
    for n in names:
        # gradients summed in another order: float32 rounding only, far below the step size
        torch.testing.assert_close(a["model"][n], b["model"][n], rtol=0, atol=1e-5, msg=n)
    moved = max(float((a["model"][n] - start[n]).abs().max()) for n in names)
    assert moved > 1e-4
    assert max(float((a["model"][n] - b["model"][n]).abs().max()) for n in names) < moved / 100
    # Every rank leaves with the same model, batch-norm statistics included (each rank's last
    # forward updated its own from its own images; they are rank 0's again): so every rank
    # evaluates, and decides on, the same model.
    rank0, rank1 = (torch.load(tmp_path / f"two-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert any("running_mean" in k for k in rank0)
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k


def test_torchrun_without_a_process_group_is_refused_before_any_work(
    tiny_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="no process group is set up; wrap the whole run"):
        train_detector(_config(tiny_data, tmp_path, epochs=1))
    assert not list(tmp_path.iterdir())


def test_val_figures_only_in_epochs_that_validated(tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path, epochs=3, val=tiny_data, val_split="train", val_every=2)
    history = train_detector(config, validate=_validator(config))["history"]
    assert ["val_AP50" in row for row in history] == [False, True, True]


def test_val_without_a_validate_function_is_refused(tiny_data, tmp_path):
    # Training takes its validation from the caller (it imports no evaluation code); a val
    # folder with nothing to validate on it would silently report no AP.
    config = _config(tiny_data, tmp_path, epochs=1, val=tiny_data, val_split="train")
    with pytest.raises(ConfigError, match="config.val=.* but no validate= was given"):
        train_detector(config)
    assert not (tmp_path / "last.pt").exists()


def test_bn_momentum_override(tiny_data, tmp_path):
    result = train_detector(_config(tiny_data, tmp_path, epochs=1, bn_momentum=0.1))
    moms = {m.momentum for m in result["model"].modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert moms == {0.1}


@pytest.mark.parametrize(("letter_box", "option", "expected"), [(1, None, True), (0, None, False),
                                                                  (1, False, False)])  # fmt: skip
def test_letterbox_follows_the_cfg_unless_given(
    tiny_data, tmp_path, monkeypatch, letter_box, option, expected
):
    """Training images and validation are made as ``yolo-prune eval`` makes them: the cfg's
    ``letter_box`` unless the option says otherwise."""
    import yolo_prune.detect.train as train_module
    import yolo_prune.eval.detection as detection

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG.read_text().replace("[net]\n", f"[net]\nletter_box={letter_box}\n", 1))
    seen = []
    dataset = train_module.TrainDataset
    monkeypatch.setattr(
        train_module,
        "TrainDataset",
        lambda *a, **kw: seen.append(("train", kw["letterbox"])) or dataset(*a, **kw),
    )
    monkeypatch.setattr(
        detection,
        "evaluate_detector",
        lambda *a, **kw: seen.append(("val", kw["letterbox"])) or {"AP": 0.0, "AP50": 0.0},
    )
    config = _config(
        tiny_data, tmp_path / "out", cfg=cfg, epochs=1, val=tiny_data, val_split="train",
        letterbox=option, max_steps=1,
    )  # fmt: skip
    train_detector(config, validate=_validator(config))
    # the training images, then the batch-norm recalibration images, then validation
    assert seen == [("train", expected), ("train", expected), ("val", expected)]


def test_conflicting_model_and_options_are_refused(tiny_data, tmp_path):
    model = Darknet.from_cfg(TINY_CFG, size=32)
    with pytest.raises(ConfigError, match="built for 32x32 but config.size is 64"):
        train_detector(_config(tiny_data, tmp_path), model=model)
    with pytest.raises(ConfigError, match="either a model or config.weights"):
        train_detector(_config(tiny_data, tmp_path, weights=tmp_path / "w"), model=model)


@pytest.mark.slow
def test_finetune_real_yolov3_tiny_on_coco128_keeps_ap50(shared_data, repo_cfg, tmp_path):
    """Acceptance 1 (minutes on CPU): 10 epochs on the 128 train images from the real weights
    leave val AP50 on the 64 val images within 3 points of the starting model's.

    With the project's cfg (second [yolo] mask 1,2,3, which these weights were trained with),
    measured at 416 px on 2 busy CPU cores (8.4 min): AP50 0.426 -> 0.451 (AP 0.225 -> 0.227).
    With the shared AlexeyAB cfg (mask 0,1,2) the start is 0.302 and the fine-tune spends its
    epochs re-learning the 26x26 head's box sizes (-> 0.390); docs/finetune_coco128.md.

    The gradient-norm clip of 10 is pinned: it was the trainer's default when this bar was met,
    and the default has been no clip since a structured cut needed full steps. Measured
    2026-12-01 on an AMD EPYC: with the clip 0.4265 -> 0.4077; without it the same 10 epochs at
    lr 5e-4 move the weights 6-50x further per step and give 0.3789 (paired bootstrap of the
    change: -4.75 [-10.77, -1.37] points without the clip, -1.87 [-6.05, +1.92] with it).
    """
    from yolo_prune.eval.detection import evaluate_detector

    cfg, weights = repo_cfg / "yolov3-tiny.cfg", shared_data / "weights" / "yolov3-tiny.weights"
    model = Darknet.from_cfg(cfg, size=416)
    model.load_weights(weights)
    val = dict(split="val2017", size=416, latency=False)
    start = evaluate_detector(model, shared_data / "coco128", **val)["AP50"]
    assert start > 0.4  # the masks match the weights
    config = TrainConfig(
        cfg=cfg,
        weights=weights,
        data=shared_data / "coco128",
        split="train2017",
        val=shared_data / "coco128",
        val_split="val2017",
        out=tmp_path,
        epochs=10,
        size=416,
        lr=5e-4,
        val_every=10,
        grad_clip=10.0,
    )
    final = train_detector(config, validate=_validator(config))["history"][-1]["val_AP50"]
    assert abs(final - start) <= 0.03, (start, final)


@pytest.mark.slow
def test_overfit_8_images_from_random_init(shared_data, tmp_path):
    """Acceptance 1, second part (about 3 min on CPU): AP50 >= 0.5 on the 8 training images."""
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        (data / sub / "train").mkdir(parents=True)
    src = shared_data / "coco128"
    for image in sorted((src / "images" / "train2017").glob("*.jpg"))[:8]:
        shutil.copy(image, data / "images" / "train" / image.name)
        shutil.copy(src / "labels" / "train2017" / f"{image.stem}.txt", data / "labels" / "train")
    config = TrainConfig(
        cfg=shared_data / "cfg" / "yolov3-tiny.cfg",
        data=data,
        val=data,
        out=tmp_path / "run",
        epochs=120,
        size=256,
        batch_size=4,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        warmup_epochs=5,
        augment=None,
        ema=False,
        bn_momentum=0.1,
        val_every=120,
    )
    history = train_detector(config, validate=_validator(config))["history"]
    assert history[-1]["val_AP50"] >= 0.5
