"""``train_classifier``: a phase checkpoints and resumes exactly, and two gloo processes train
as one process does on the same batches."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from yolo_prune.classify.train import ClassifyTrainConfig, train_classifier
from yolo_prune.data.classification import ShuffledBatches
from yolo_prune.engine.hooks import Hook
from yolo_prune.prune.masks import MaskHook

# 11 images in batches of 4: the last batch has 3, which two processes share 2 + 1.
CONFIG = ClassifyTrainConfig(batch_size=4, optimizer="sgd", lr=0.1, shift=1, flip=True,
                             checkpoint_every=1)  # fmt: skip


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand((11, 1, 6, 6), generator=gen), torch.randint(0, 3, (11,), generator=gen)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        "3.weight": torch.rand(model[3].weight.shape, generator=torch.Generator().manual_seed(1))
        > 0.5
    }


class _Stop(Exception):
    pass


class _StopAfter(Hook):
    """Stop the run after optimizer step ``step`` (counted from 1), before it is checkpointed."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, state) -> None:
        if state.step + 1 == self.step:
            raise _Stop


def _fit(out: Path | None, *, stop: int | None = None, resume: bool = False):
    x, y = _data()
    model = _model()
    hooks: list[Hook] = [MaskHook(_masks(model))]
    if stop is not None:
        hooks.append(_StopAfter(stop))
    batches = ShuffledBatches(x, y, batch_size=4, shift=1, seed=0, flip=True)
    figures = train_classifier(model, batches, CONFIG, epochs=3, hooks=hooks, out=out,
                               resume=resume)  # fmt: skip
    return model, figures


@pytest.mark.parametrize(
    "stop, position",  # 3 steps an epoch; stopped after step `stop`, before its checkpoint
    [(5, "at epoch 1, step 4 (1 into the epoch)"), (7, "at epoch 2, step 6 (0 into the epoch)")],
    ids=["mid-epoch", "epoch-end"],
)
def test_a_stopped_phase_resumes_to_the_uninterrupted_weights(stop, position, tmp_path, caplog):
    whole, figures = _fit(None)
    with pytest.raises(_Stop):
        _fit(tmp_path, stop=stop)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["step"] == stop - 1 and "_PositionHook:0" in saved["hooks"]
    with caplog.at_level(logging.INFO, logger="yolo_prune.classify.train"):
        resumed, again = _fit(tmp_path, resume=True)
    assert position in caplog.text
    for (name, a), b in zip(resumed.state_dict().items(), whole.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert again == figures  # the last epoch's loss and learning rate, as if never stopped
    assert torch.count_nonzero(resumed[3].weight[~_masks(resumed)["3.weight"]]) == 0


def test_a_finished_phase_resumes_without_training(tmp_path):
    done, figures = _fit(tmp_path)
    again, same = _fit(tmp_path, resume=True)
    for a, b in zip(again.parameters(), done.parameters(), strict=True):
        assert torch.equal(a, b)
    assert same == figures


# Run by torchrun (two ranks) and imported by the test (one process): the same training.
DDP_SCRIPT = """
import sys
from pathlib import Path

import torch
from torch import nn

from yolo_prune.classify.train import ClassifyTrainConfig, train_classifier
from yolo_prune.data.classification import ShuffledBatches
from yolo_prune.engine.distributed import distributed_session


def fit(out):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand((11, 1, 6, 6), generator=gen), torch.randint(0, 3, (11,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    config = ClassifyTrainConfig(batch_size=4, optimizer="sgd", lr=0.1, shift=1, flip=True,
                                 checkpoint_every=1)
    batches = ShuffledBatches(x, y, batch_size=4, shift=1, seed=0, flip=True)
    train_classifier(model, batches, config, epochs=3, out=out)
    return model


if __name__ == "__main__":
    with distributed_session("cpu") as info:
        model = fit(Path(sys.argv[1]) / f"out{info.rank}")
        torch.save(model.state_dict(), Path(sys.argv[1]) / f"rank{info.rank}.pt")
"""


def test_two_gloo_processes_train_as_one_process_on_the_same_batches(tmp_path):
    """Each rank takes its part of every batch of 4 (the last batch of 3 shared 2 + 1, the
    loss weighted by the part), so the weights are one process's; rank 0 alone checkpoints."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run([*launcher, str(script), str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("ddp_fit", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = module.fit(tmp_path / "one").state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    start = _model().state_dict()
    for name, value in one.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        # float rounding only (measured 1.5e-8): DDP averages two partial gradients, one
        # process takes the mean over the batch
        torch.testing.assert_close(ranks[0][name], value, rtol=0, atol=1e-6, msg=name)
    assert max(float((one[n] - start[n]).abs().max()) for n in one) > 1e-3  # it trained
    assert (tmp_path / "out0" / "last.pt").is_file()
    assert not (tmp_path / "out1").exists()
