"""``yolo-prune prune --resume``: a job killed (SIGKILL) in the ADMM phase or in the masked
fine-tuning continues from its phase checkpoints and ends with the uninterrupted run's weights,
for a detector and for a classifier (LeNet-5)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from yolo_prune.cli.main import main
from yolo_prune.darknet import Darknet

RECIPE = """
size: 64
ratio: 0.5
method: admm
train: {batch_size: 4, lr: 0.001, warmup_epochs: 0.0, deterministic: true, checkpoint_every: 1,
        ema_tau: 3.0}
methods:
  - {name: admm, method: admm, epochs: 3, stages: 1, retrain_epochs: 2}
"""

# The job in a process of its own, killed at the given optimizer step of the given phase: the
# kill hook runs after the step and before the checkpoint of that step is written.
KILLED = """
import os, signal, sys
import yolo_prune.jobs.tasks as tasks
from yolo_prune.cli.main import main
from yolo_prune.engine.hooks import Hook

PHASE, STEP = sys.argv[1], int(sys.argv[2])

class Kill(Hook):
    def after_step(self, state):
        if state.step + 1 == STEP:
            os.kill(os.getpid(), signal.SIGKILL)

def killing(fit):
    def killing_fit(self, model, phase, epochs, hooks, **kw):
        return fit(self, model, phase, epochs, [*hooks, Kill()] if phase == PHASE else hooks, **kw)
    return killing_fit

for task in (tasks.DetectionTask, tasks.ClassificationTask):
    task.fit = killing(task.fit)
main(sys.argv[3:])
"""


def _start_killed(phase: str, step: int, args: list[str]) -> subprocess.Popen:
    """The job ``args`` started in a process of its own, which is killed after ``step`` steps
    of ``phase``."""
    command = [sys.executable, "-c", textwrap.dedent(KILLED), phase, str(step), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_killed(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]


def _args(cfg, weights, data, recipe, out, *extra):
    return ["prune", "--cfg", str(cfg), "--weights", str(weights), "--data", str(data),
            "--recipe", str(recipe), "--out", str(out), "--no-latency", "--no-deploy",
            "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_cfg, tiny_weights, tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = root / "ref"
    assert main(_args(tiny_cfg, tiny_weights, tiny_dataset, recipe, out)) == 0
    return recipe, out


@pytest.mark.parametrize(
    "phase, step",
    [("admm", 4), pytest.param("retrain", 3, marks=pytest.mark.slow)],  # 12 s each
)
def test_sigkill_then_resume_equals_the_uninterrupted_run(
    phase, step, uninterrupted, tiny_cfg, tiny_weights, tiny_dataset, tmp_path, caplog
):
    recipe, ref = uninterrupted
    out = tmp_path / "cut"
    args = _args(tiny_cfg, tiny_weights, tiny_dataset, recipe, out)
    _wait_killed(_start_killed(phase, step, args))
    assert not (out / "report.json").exists()
    ckpt = torch.load(out / "phases" / phase / "last.pt", weights_only=True)
    assert ckpt["step"] == step - 1  # killed in mid-phase, one step after its last checkpoint

    with caplog.at_level(logging.INFO, logger="yolo_prune.detect.train"):
        assert main([*args, "--resume"]) == 0
    # the killed phase continued from its checkpoint rather than training again from its start
    assert f"phases/{phase}/last.pt at epoch 1, step {step - 1}" in caplog.text
    a = Darknet.from_cfg(tiny_cfg, size=64)
    a.load_weights(out / "pruned.weights")
    b = Darknet.from_cfg(tiny_cfg, size=64)
    b.load_weights(ref / "pruned.weights")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    done, whole = (json.loads((d / "report.json").read_text()) for d in (out, ref))
    assert done["pruned"]["AP50"] == whole["pruned"]["AP50"]
    assert done["target_sparsity"] == whole["target_sparsity"]


def test_resume_refuses_a_folder_another_recipe_wrote(uninterrupted, tiny_cfg, tiny_weights,
                                                      tiny_dataset, capsys):  # fmt: skip
    recipe, ref = uninterrupted
    args = _args(tiny_cfg, tiny_weights, tiny_dataset, recipe, ref, "--ratio", "0.3", "--resume")
    assert main(args) == 2
    assert "was written by another recipe or method than this command's" in capsys.readouterr().err


def _pruned(cfg, out) -> dict[str, torch.Tensor]:
    model = Darknet.from_cfg(cfg)
    model.load_weights(out / "pruned.weights")
    return model.state_dict()


def test_a_classifier_killed_in_admm_or_in_the_retraining_resumes_its_phases(
    lenet_job, lenet_args, repo_cfg, tmp_path, caplog
):
    """LeNet-5 killed in mid-epoch of ADMM, and (another run) of the masked retraining: the
    resumed job continues every phase from its checkpoint (the finished ones train no more)
    and ends with the uninterrupted run's pruned weights and figures."""
    recipe, ref = lenet_job
    # (phase, kill after this step of it, the resume position it leaves: epoch, step, into it)
    cuts = [("admm", 6, (1, 5, 1)), ("retrain", 3, (0, 2, 2))]  # 4 steps an epoch
    args = {phase: lenet_args(recipe, tmp_path / phase) for phase, _, _ in cuts}
    # both at once: starting Python and torch is most of their time
    running = [_start_killed(phase, step, args[phase]) for phase, step, _ in cuts]
    for proc in running:
        _wait_killed(proc)
    cfg = repo_cfg / "lenet5.cfg"
    whole = json.loads((ref / "report.json").read_text())
    for phase, _, (epoch, step, into) in cuts:
        out = tmp_path / phase
        assert not (out / "report.json").exists()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="yolo_prune.classify.train"):
            assert main([*args[phase], "--resume"]) == 0
        resumed = f"{phase}/last.pt at epoch {epoch}, step {step} ({into} into the epoch)"
        assert resumed in caplog.text  # not trained again from the phase's start
        assert "dense/last.pt at epoch 1, step 4 (0 into the epoch)" in caplog.text
        if phase == "retrain":
            assert "admm/last.pt at epoch 2, step 8 (0 into the epoch)" in caplog.text
        a, b = _pruned(cfg, out), _pruned(cfg, ref)
        for name, x in a.items():
            torch.testing.assert_close(x, b[name], rtol=0, atol=1e-6, msg=f"{phase}: {name}")
        done = json.loads((out / "report.json").read_text())
        assert done["pruned"]["top1"] == whole["pruned"]["top1"]
        assert done["target_sparsity"] == whole["target_sparsity"] == pytest.approx(0.8)
        # a resumed phase reports the figures of the uninterrupted one
        for p, q in zip(done["phases"], whole["phases"], strict=True):
            assert {**p, "minutes": 0} == {**q, "minutes": 0}
