"""``qat_epochs``: the prune job quantizes a quantization-aware twin of the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_prune.errors import ConfigError
from yolo_prune.jobs.models import load_model
from yolo_prune.jobs.prune import PruneJobConfig, run_prune
from yolo_prune.jobs.recipe import read_recipe

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TINY_CFG = Path(__file__).resolve().parents[1] / "prune" / "tiny_detector.cfg"


def _job(tiny_dataset, tiny_weights, recipe: Path, out: Path) -> PruneJobConfig:
    return PruneJobConfig(cfg=TINY_CFG, weights=tiny_weights, data=tiny_dataset, val=tiny_dataset,
                          val_split="train", out=out, recipe=read_recipe(recipe),
                          method="magnitude", progress=False, latency=False)  # fmt: skip


def test_the_prune_job_quantizes_a_quantization_aware_twin(
    tiny_dataset, tiny_weights, tiny_recipe_text, tmp_path
):
    """With ``qat_epochs`` the job trains a copy with the rounding on and quantizes that; the
    float files stay the pruned model's."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text + "qat_epochs: 1\n")
    out = tmp_path / "run"
    report = run_prune(_job(tiny_dataset, tiny_weights, recipe, out))
    assert report["qat_epochs"] == 1
    assert [p["phase"] for p in report["phases"]][-1] == "qat"
    assert (out / "phases" / "qat" / "metrics.json").is_file()
    assert "pruned-int8.onnx, 1 epochs quantization-aware" in (out / "report.md").read_text()
    # the float file computes what the pruned model computes: the twin went to the INT8 file only
    pruned = load_model(TINY_CFG, out / "pruned.weights", size=64)[0].eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = pruned(x).numpy()
    session = ort.InferenceSession(str(out / "pruned.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {"images": x.numpy()})[0], want, rtol=1e-4, atol=1e-4
    )
    ops = {n.op_type for n in onnx.load(str(out / "pruned-int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops


def test_qat_epochs_must_be_a_whole_number(tiny_dataset, tiny_weights, tiny_recipe_text, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text + "qat_epochs: 1.5\n")
    with pytest.raises(ConfigError, match="qat_epochs=1.5"):
        run_prune(_job(tiny_dataset, tiny_weights, recipe, tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_under_torchrun_qat_epochs_is_refused_before_any_work(
    tiny_dataset, tiny_weights, tiny_recipe_text, tmp_path, monkeypatch
):
    """Rank 0 trains the INT8 copy after the other ranks have returned: a DDP fit would wait
    for them for ever, so the job refuses first."""
    from yolo_prune.engine.distributed import DistInfo
    from yolo_prune.jobs import prune as prune_mod

    monkeypatch.setattr(prune_mod, "dist_info", lambda device="cpu": DistInfo(0, 2, 0, device))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text + "qat_epochs: 1\n")
    with pytest.raises(ConfigError, match="without torchrun"):
        run_prune(_job(tiny_dataset, tiny_weights, recipe, tmp_path / "run"))
    assert not (tmp_path / "run").exists()
