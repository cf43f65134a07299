"""``yolo-prune prune`` end to end on a tiny detector: files, figures, formats, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from yolo_prune.cli.main import main
from yolo_prune.darknet import Darknet
from yolo_prune.jobs.models import load_model
from yolo_prune.jobs.prune import PruneJobConfig, run_prune
from yolo_prune.jobs.recipe import read_recipe

TINY_CFG = Path(__file__).resolve().parents[1] / "prune" / "tiny_detector.cfg"


def _job(tiny_dataset, tiny_weights, tiny_recipe, out, method="admm", **kw):
    kw.setdefault("deploy", False)  # the ONNX/INT8 files are tested on admm_run alone
    return PruneJobConfig(
        cfg=TINY_CFG,
        weights=tiny_weights,
        data=tiny_dataset,
        val=tiny_dataset,
        val_split="train",
        out=out,
        recipe=read_recipe(tiny_recipe),
        method=method,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def admm_run(tiny_dataset, tiny_weights, tiny_recipe_text, tmp_path_factory):
    recipe = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    recipe.write_text(tiny_recipe_text)
    out = tmp_path_factory.mktemp("admm_run")
    report = run_prune(_job(tiny_dataset, tiny_weights, recipe, out, deploy=True))
    return out, report


def test_writes_every_output_and_no_temporary_file(admm_run):
    out, _ = admm_run
    for name in ("config.yaml", "dense.json", "pruned.weights", "pruned.sparse",
                 "layer_sparsity.png", "report.json", "report.md"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "phases" / "admm" / "metrics.json").is_file()
    assert (out / "phases" / "retrain" / "metrics.json").is_file()
    assert not list((out / "phases").rglob("last.pt"))  # removed once the run finished
    assert not [p for p in out.rglob("*.tmp")]
    assert (out / "layer_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_figures_match_the_saved_weights(admm_run):
    out, report = admm_run
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    model = Darknet.from_cfg(TINY_CFG, size=64)
    model.load_weights(out / "pruned.weights")
    masks_total = sum(r["weights"] for r in report["layers"])
    zeros = sum(
        int((dict(model.named_parameters())[r["name"]] == 0).sum()) for r in report["layers"]
    )
    assert zeros >= round(0.5 * masks_total)  # the ratio, every pruned weight still zero
    assert report["target_sparsity"] == pytest.approx(0.5, abs=1e-3)
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert report["pruned"]["nonzero_params"] == nonzero
    assert report["dense"]["nonzero_params"] > nonzero
    for key in ("AP", "AP50", "fps", "gflops", "gflops_nonzero", "weights_bytes"):
        assert report["dense"][key] is not None and report["pruned"][key] is not None, key
    # the table shows the JSON's figures
    md = (out / "report.md").read_text()
    assert f"| {100 * report['pruned']['AP50']:.2f} |" in md
    assert f"{report['pruned']['nonzero_params']:,}" in md


def test_deployable_files_are_scored_timed_and_sized(admm_run):
    out, report = admm_run
    for name in ("pruned.onnx", "pruned-int8.onnx"):
        model, fmt = load_model(None, out / name)
        assert fmt == "onnx" and model.input_shape == (3, 64, 64) and model.num_classes == 2
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "pruned-int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert report["int8"]["AP50"] is not None
    dense_ms = report["dense"]["latency_ms_by_runtime"]
    assert set(dense_ms) == {"torch", "onnxruntime", "opencv"}
    assert all(isinstance(v, float) and v > 0 for v in dense_ms.values())
    assert list(report["int8"]["latency_ms_by_runtime"]) == ["onnxruntime"]
    assert report["dense"]["latency_ms"] == min(dense_ms.values())
    md = (out / "report.md").read_text()
    files = report["files"]
    ratio = report["dense_weights_bytes"] / files["pruned-int8.onnx"]
    assert f"| pruned-int8.onnx | {files['pruned-int8.onnx']:,} | {ratio:.1f}x |" in md
    assert files["pruned.sparse (zlib)"] < files["pruned.sparse"]
    assert "| latency (ms, batch 1), onnxruntime |" in md


def test_sparse_file_reloads_to_the_same_model(admm_run):
    out, _ = admm_run
    dense_layout = Darknet.from_cfg(TINY_CFG, size=64)
    dense_layout.load_weights(out / "pruned.weights")
    sparse, fmt = load_model(None, out / "pruned.sparse", size=64)  # the cfg travels inside
    assert fmt == "sparse"
    for (n, a), (_, b) in zip(
        dense_layout.state_dict().items(), sparse.state_dict().items(), strict=True
    ):
        if not n.endswith("num_batches_tracked"):  # not in .weights files
            assert torch.equal(a, b), n
    assert (out / "pruned.sparse").stat().st_size < (out / "pruned.weights").stat().st_size


def test_soft_filter_run_exports_a_shrunk_model_with_the_same_outputs(
    tiny_dataset, tiny_weights, tiny_recipe, tmp_path
):
    report = run_prune(
        _job(tiny_dataset, tiny_weights, tiny_recipe, tmp_path, method="soft-filter", latency=False)
    )
    assert report["shrunk"], "whole filters are zero, so the model must shrink"
    masked = Darknet.from_cfg(TINY_CFG, size=64)
    masked.load_weights(tmp_path / "pruned.weights")
    small = Darknet.from_cfg(tmp_path / "pruned-shrunk.cfg")
    small.load_weights(tmp_path / "pruned-shrunk.weights")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())
    # The zeroed filters' constant outputs (BN bias through the activation) are folded into the
    # readers; the shrunk export equals that folded masked model.
    from yolo_prune.darknet.surgery import fold_pruned_

    fold_pruned_(masked, masked.zero_channel_groups())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = masked.eval()(x), small.eval()(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    assert report["shrunk"]["AP50"] is not None and report["shrunk"]["fps"] is None
    # beside the cut: the dense model at the largest smaller input within the shrunk FLOPs
    smaller = report["smaller_input"]
    stride = Darknet.from_cfg(TINY_CFG).graph.max_stride
    assert smaller["input"] % stride == 0 and smaller["input"] < 64
    assert smaller["gflops"] <= report["shrunk"]["gflops"] * 1.02
    assert smaller["AP50"] is not None and smaller["params"] == report["dense"]["params"]
    assert (
        f"dense at {smaller['input']}x{smaller['input']}, not pruned"
        in (tmp_path / "report.md").read_text()
    )


def test_one_shot_channel_pruning_ranks_on_data_and_refits_the_shrunk_model(
    tiny_dataset, tiny_weights, tiny_recipe_text, tmp_path
):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text + "  - {name: channel, method: channel, refit: 4}\n")
    out = tmp_path / "out"
    report = run_prune(_job(tiny_dataset, tiny_weights, recipe, out, method="channel",
                            latency=False))  # fmt: skip
    assert report["phases"] == [] and "No fine-tuning." in (out / "report.md").read_text()
    assert report["refit_images"] == 4 and "refit on 4 images" in (out / "report.md").read_text()
    assert report["shrunk"]["params"] < report["dense"]["params"]
    # the export is the refitted model: it differs from the plain shrink of the masked weights
    from yolo_prune.darknet.surgery import fold_pruned_, shrink

    masked = Darknet.from_cfg(TINY_CFG, size=64)
    masked.load_weights(out / "pruned.weights")
    groups = masked.zero_channel_groups()
    assert groups
    plain = shrink(fold_pruned_(masked, groups), groups).eval()
    small = Darknet.from_cfg(out / "pruned-shrunk.cfg")
    small.load_weights(out / "pruned-shrunk.weights")
    assert [p.shape for p in small.parameters()] == [p.shape for p in plain.parameters()]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(small.eval()(x), plain(x), rtol=1e-3, atol=1e-3)


def test_a_one_shot_depth_cut_is_saved_as_the_network_without_its_blocks(
    tiny_dataset, tiny_weights, tiny_recipe_text, tmp_path
):
    """No fine-tuning phase folds a one-shot cut, so the job does: pruned.weights (and the
    report's pruned column) compute what the shrunk, shallower model computes, the dropped
    branch silent rather than adding its batch-norm shift to the trunk."""
    recipe = tmp_path / "tiny.yaml"
    text = tiny_recipe_text.replace("ratio: 0.5", "ratio: 0.2")  # the one block: 35% of FLOPs
    recipe.write_text(text + "  - {name: channel, method: channel, depth: only, cost: flops, "
                      "refit: 0}\n")  # fmt: skip
    out = tmp_path / "out"
    report = run_prune(_job(tiny_dataset, tiny_weights, recipe, out, method="channel",
                            latency=False))  # fmt: skip
    assert report["blocks_removed"] == ["3-5"]
    masked = Darknet.from_cfg(TINY_CFG, size=64)
    masked.load_weights(out / "pruned.weights")
    assert not masked.layers[4].bn.weight.any() and not masked.layers[4].bn.bias.any()
    small = Darknet.from_cfg(out / "pruned-shrunk.cfg")
    small.load_weights(out / "pruned-shrunk.weights")
    assert len(small.layers) == len(masked.layers) - 3
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), masked.eval()(x), rtol=1e-5, atol=1e-5)
    assert report["pruned"]["AP50"] == report["shrunk"]["AP50"]


def _cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


def test_cli_errors_are_one_line(tiny_dataset, tiny_weights, tiny_recipe, tmp_path, capsys):
    base = ["prune", "--cfg", str(TINY_CFG), "--weights", str(tiny_weights), "--data",
            str(tiny_dataset), "--recipe", str(tiny_recipe), "--out", str(tmp_path / "o")]  # fmt: skip
    cases = [
        (["--method", "admn"], "unknown method 'admn'; choose one of:"),
        (["--ratio", "1.5"], "outside [0, 1)"),
        (["--set", "train.lrate=1"], "unknown option 'lrate'"),
        (["--set", "ratoi=0.5"], "unknown key 'ratoi'"),
        (["--data", str(tmp_path / "none")], "no such dataset folder"),
        (
            ["--cfg", str(TINY_CFG.parents[2] / "cfg" / "lenet5.cfg")],
            "is not a classification dataset (MNIST or CIFAR-10), but lenet5.cfg is a classifier",
        ),
        (
            ["--set", "phases={fine-tune: {lr: 0.1}}"],
            "phases.fine-tune: no method runs a phase of that name; known phases:",
        ),
        (
            ["--set", "budget_epochs=7"],
            "methods.admm spends 2 training epochs but the recipe's budget_epochs is 7",
        ),
        (["--flops", "1.5"], "--flops 1.5; expected a fraction of the dense FLOPs in (0, 1)"),
        (["--flops", "0.5", "--ratio", "0.3"], "give --ratio or --flops, not both"),
    ]
    for extra, message in cases:
        code, cap = _cli(base + extra, capsys)
        assert code == 2, extra
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, cap.err)
        assert not (tmp_path / "o" / "report.json").exists()
    code, cap = _cli(base[:-2] + ["--out", str(tmp_path / "o"), "--weights", "nope.weights"],
                     capsys)  # fmt: skip
    assert code == 2 and "nope.weights" in cap.err


def test_ctrl_c_leaves_checkpoints_and_no_report(tiny_dataset, tiny_weights, tmp_path):
    # Long enough phases that the interrupt lands mid-training.
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(
        "size: 64\nratio: 0.5\ntrain: {batch_size: 2, ema: false, checkpoint_every: 1}\n"
        "methods: [{name: admm, method: admm, epochs: 5000, stages: 1, retrain_epochs: 1}]\n"
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "yolo_prune.cli.main", "prune", "--cfg", str(TINY_CFG),
         "--weights", str(tiny_weights), "--data", str(tiny_dataset), "--val-split", "train",
         "--recipe", str(recipe), "--out", str(out), "--no-progress"],
        stderr=subprocess.PIPE, text=True, env=env,
        # a shell that starts CI in the background ignores SIGINT, and a child inherits that:
        # give the child the default disposition so Python turns SIGINT into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    ckpt = out / "phases" / "admm" / "last.pt"
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert ckpt.exists(), "no checkpoint appeared"
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before the interrupt (make it longer)"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "yolo-prune prune: interrupted"
    assert not (out / "report.json").exists() and not (out / "report.md").exists()
    assert not list(out.rglob("*.tmp"))
    from yolo_prune.engine.checkpoint import load_checkpoint

    data = load_checkpoint(ckpt)  # the last complete checkpoint is readable
    assert data["step"] >= 1


def test_detect_takes_the_pruned_outputs_directly(admm_run, shared_data, tmp_path, capsys):
    out, _ = admm_run
    dog = str(shared_data / "images" / "dog.jpg")
    runs = {
        "sparse": ["--weights", str(out / "pruned.sparse")],  # cfg travels inside
        "dense-layout": ["--cfg", str(TINY_CFG), "--weights", str(out / "pruned.weights")],
    }
    for name, weights in runs.items():
        code = main(["detect", *weights, "--source", dog, "--out", str(tmp_path / name),
                     "--conf", "0.001", "--size", "64"])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        assert (tmp_path / name / "detections.json").is_file()
    # the same model either way: the same detections
    a = json.loads((tmp_path / "sparse" / "detections.json").read_text())
    b = json.loads((tmp_path / "dense-layout" / "detections.json").read_text())
    assert a == b and a


def test_without_data_a_weight_only_method_prunes_and_says_nothing_was_measured(
    tiny_weights, tmp_path, capsys
):
    out = tmp_path / "nodata"
    base = ["prune", "--cfg", str(TINY_CFG), "--weights", str(tiny_weights), "--size", "64",
            "--ratio", "0.5", "--out", str(out), "--no-latency", "--no-progress"]  # fmt: skip
    assert main([*base, "--method", "channel", "--set", "methods.channel.criterion=l1"]) == 0
    printed = capsys.readouterr().out
    assert "Accuracy was not measured" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["measured"] is False and report["pruned"]["AP50"] is None
    assert report["refit_images"] == 0 and report["phases"] == []
    assert (out / "pruned-shrunk.cfg").is_file() and (out / "pruned.onnx").is_file()
    assert not (out / "pruned-int8.onnx").exists()  # INT8 needs calibration images
    # a method that trains, or ranks on data, says what to give or run instead
    for extra in (["--method", "admm"], ["--method", "channel"]):
        assert main([*base, "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no training data: give --data FOLDER" in err, err
        assert not (tmp_path / "x" / "report.json").exists()


def test_an_unstructured_one_shot_cut_is_refitted_keeping_its_zeros(
    tiny_dataset, tiny_weights, tiny_recipe_text, tmp_path
):
    """magnitude (one shot) gets the job's default refit like a structured cut, but on its
    masks: the kept weights change, the pruned ones stay zero; with and without fine-tuning."""
    from yolo_prune.prune.registry import build_pruner

    dense = Darknet.from_cfg(TINY_CFG, size=64)
    dense.load_weights(tiny_weights)
    plain = build_pruner("magnitude", {"ratio": 0.5}).plan(dense, 0.5)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text + "  - {name: one-shot, method: magnitude, epochs: 0, "
                      "refit: 4}\n")  # fmt: skip
    for name, at in (("magnitude", "the cut, before fine-tuning"),
                     ("one-shot", "the cut, with no fine-tuning after it")):  # fmt: skip
        out = tmp_path / name
        report = run_prune(_job(tiny_dataset, tiny_weights, recipe, out, method=name,
                                latency=False))  # fmt: skip
        assert report["refit_images"] == (8 if name == "magnitude" else 4)  # 32 asked, 8 there
        assert report["refit_at"] == at and f"images at {at}." in (out / "report.md").read_text()
        pruned = Darknet.from_cfg(TINY_CFG, size=64)
        pruned.load_weights(out / "pruned.weights")
        params = dict(pruned.named_parameters())
        for param, mask in plain.items():
            assert not params[param][~mask].any(), param  # the same zeros as the plain cut
        if name == "one-shot":  # no training: what moved the kept weights is the refit
            moved = [p for p, mask in plain.items()
                     if not torch.equal(params[p][mask], dense.get_parameter(p)[mask])]  # fmt: skip
            assert moved


def test_an_unstructured_cut_that_empties_a_filter_keeps_every_zero_through_the_refit(
    tiny_weights,
):
    """Such a cut looks structured where a filter went whole, but its other zeros are single
    weights: it is refitted on its masks (before, the shrunk model was refitted densely and
    the masks then zeroed part of the fit)."""
    from yolo_prune.jobs.prune import refit_cut_
    from yolo_prune.prune.masks import apply_masks_
    from yolo_prune.prune.registry import build_pruner

    dense = Darknet.from_cfg(TINY_CFG, size=64)
    dense.load_weights(tiny_weights)
    dense.eval()
    model = Darknet.from_cfg(TINY_CFG, size=64)
    model.load_weights(tiny_weights)
    masks = build_pruner("magnitude", {"ratio": 0.5}).plan(model, 0.5)
    first = next(iter(masks))
    masks[first][0] = False  # one filter emptied whole
    apply_masks_(model, masks)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert refit_cut_(model, dense, masks, images)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert not params[name][~mask].any(), name
    assert any(not torch.equal(params[n][m], dense.get_parameter(n)[m]) for n, m in masks.items())
