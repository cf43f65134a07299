import json

import pytest
import torch

from yolo_prune.cli.main import main
from yolo_prune.darknet import Darknet
from yolo_prune.data.mnist import mnist_tensors
from yolo_prune.eval.accuracy import evaluate_accuracy, tensor_batches
from yolo_prune.prune.masks import apply_masks_
from yolo_prune.prune.projections import project_global
from yolo_prune.prune.sparse import save_sparse
from yolo_prune.prune.targets import TargetConfig, select_targets


@pytest.fixture(scope="module")
def pruned_lenet(tmp_path_factory, repo_cfg, shared_data):
    """A LeNet-5 pruned to 90% (random weights), saved in all three formats, and its accuracy."""
    tmp = tmp_path_factory.mktemp("lenet")
    torch.manual_seed(0)
    model = Darknet.from_cfg(repo_cfg / "lenet5.cfg")
    names = select_targets(model, TargetConfig(protect="none"))
    params = dict(model.named_parameters())
    apply_masks_(model, project_global({n: params[n] for n in names}, 0.9))
    save_sparse(tmp / "m.sparse", model, meta={"cfg": model.cfg_text()})
    torch.save(model.state_dict(), tmp / "m.pt")
    model.save_weights(tmp / "m.weights")
    x, y = mnist_tensors(shared_data / "mnist", split="test")
    acc = evaluate_accuracy(model, tensor_batches(x, y, batch_size=1000))
    return tmp, acc


@pytest.mark.parametrize("weights", ["m.sparse", "m.pt", "m.weights"])
def test_eval_reports_accuracy_params_and_sparsity(
    pruned_lenet, repo_cfg, shared_data, weights, capsys
):
    tmp, acc = pruned_lenet
    out = tmp / f"{weights}.json"
    args = ["eval", "--cfg", str(repo_cfg / "lenet5.cfg"), "--weights", str(tmp / weights)]
    rc = main([*args, "--data", str(shared_data / "mnist"), "--out", str(out)])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["dataset"] == "mnist" and metrics["split"] == "test"
    assert (metrics["correct"], metrics["total"]) == (acc.correct, acc.total)
    assert metrics["params_total"] == 431_080
    assert metrics["weights_total"] == 430_500
    assert metrics["weights_nonzero"] == 430_500 - round(0.9 * 430_500)
    assert metrics["sparsity"] == pytest.approx(round(0.9 * 430_500) / 430_500)
    stdout = capsys.readouterr().out
    assert f"top-1 {100 * acc.value:.2f}%" in stdout
    assert "sparsity 90.00%" in stdout


def test_sparse_file_carries_its_cfg(pruned_lenet, shared_data, capsys):
    tmp, acc = pruned_lenet
    rc = main(["eval", "--weights", str(tmp / "m.sparse"), "--data", str(shared_data / "mnist")])
    assert rc == 0
    assert f"({acc.correct:,}/10,000)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--weights", "nope.weights"], "nope.weights: no such weights file"),
        (["--weights", "{tmp}/m.pt", "--data", "{tmp}"], "not a dataset folder this command knows"),
        (["--weights", "{tmp}/m.pt", "--split", "val"], "--split 'val'; MNIST has train and test"),
        (["--weights", "{tmp}/m.pt", "--data", "{shared}/cifar10"], "CIFAR-10 images are"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    pruned_lenet, repo_cfg, shared_data, capsys, extra, match
):
    tmp, _ = pruned_lenet
    extra = [e.format(tmp=tmp, shared=shared_data) for e in extra]
    args = ["eval", "--cfg", str(repo_cfg / "lenet5.cfg"), "--data", str(shared_data / "mnist")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("yolo-prune eval: error:")
    assert match in err


def test_wrong_cfg_for_the_weights(pruned_lenet, shared_data, capsys, tmp_path):
    tmp, _ = pruned_lenet
    other = tmp_path / "small.cfg"
    other.write_text(
        "[net]\nwidth=28\nheight=28\nchannels=1\n[connected]\noutput=10\nactivation=linear\n"
        "[softmax]\n"
    )
    rc = main(
        [
            "eval",
            "--cfg",
            str(other),
            "--weights",
            str(tmp / "m.sparse"),
            "--data",
            str(shared_data / "mnist"),
        ]
    )
    assert rc == 2
    assert "tensors do not match the cfg" in capsys.readouterr().err
