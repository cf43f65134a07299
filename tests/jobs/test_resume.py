"""``yolo-prune prune --resume``: a job killed (SIGKILL) in the ADMM phase or in the masked
fine-tuning continues from its phase checkpoints and ends with the uninterrupted run's weights."""

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

fit = tasks.DetectionTask.fit

def killing_fit(self, model, phase, epochs, hooks, **kw):
    return fit(self, model, phase, epochs, [*hooks, Kill()] if phase == PHASE else hooks, **kw)

tasks.DetectionTask.fit = killing_fit
main(sys.argv[3:])
"""


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
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), phase, str(step), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
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
