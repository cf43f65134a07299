import pytest
import torch
from torch import nn

from yolo_prune.eval.accuracy import evaluate_accuracy, tensor_batches


class Lookup(nn.Module):
    """Scores are the input rows themselves: the prediction is argmax of each row."""

    def forward(self, x):
        return x


def test_top1_and_top2_counts():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 2, 2, 1])
    top1 = evaluate_accuracy(Lookup(), tensor_batches(scores, labels, batch_size=3))
    assert (top1.correct, top1.total) == (2, 4) and top1.value == 0.5
    top2 = evaluate_accuracy(Lookup(), tensor_batches(scores, labels, batch_size=2), k=2)
    assert (top2.correct, top2.total) == (4, 4)


def test_eval_mode_is_used_and_restored():
    modes = []

    class Spy(nn.Module):
        def forward(self, x):
            modes.append(self.training)
            return x

    spy = Spy().train()
    evaluate_accuracy(spy, [(torch.eye(2), torch.tensor([0, 1]))])
    assert modes == [False] and spy.training


def test_empty_input_gives_zero():
    acc = evaluate_accuracy(Lookup(), [])
    assert acc.total == 0 and acc.value == 0.0


@pytest.mark.parametrize("bs", [1, 3, 100])
def test_tensor_batches_cover_everything_once(bs):
    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    got = torch.cat([b[1] for b in tensor_batches(x, y, batch_size=bs)])
    assert got.tolist() == list(range(10))
