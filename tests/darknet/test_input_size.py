"""A detector built for one input size runs at any multiple of its stride, as Darknet does.

Boxes must be decoded for the input actually given: the same network built at that size, and
OpenCV's independent importer fed that size, are the references.
"""

from __future__ import annotations

import pytest
import torch

from yolo_prune.darknet import Darknet
from yolo_prune.errors import ConfigError

# yolov4 (16 s at three sizes) runs in the slow suite; the other three cover every head kind.
MODELS = [pytest.param("yolov4", marks=pytest.mark.slow), "yolov4-tiny", "yolov3-tiny",
          "yolo-fastest-1.1-xl"]  # fmt: skip
SIZES = [320, 416, 608]


@pytest.fixture(scope="module")
def saved_models(repo_cfg, tmp_path_factory, randomize):
    """name -> (model built from the cfg's own size, cfg path, weights path), built on first
    use (a deselected model costs nothing)."""
    tmp = tmp_path_factory.mktemp("input_size")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cfg = repo_cfg / f"{name}.cfg"
            model = randomize(Darknet.from_cfg(cfg))
            weights = tmp / f"{name}.weights"
            model.save_weights(weights)
            cache[name] = (model, cfg, weights)
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_any_multiple_of_the_stride_equals_a_model_built_at_that_size(
    saved_models, name, reference
):
    model, cfg, weights = saved_models(name)
    for size in SIZES:
        if size == model.input_shape[1]:
            continue
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        built = Darknet.from_cfg(cfg, size=size)
        built.load_weights(weights)
        with torch.no_grad():
            ours = model.eval()(x)
            torch.testing.assert_close(ours, built.eval()(x), rtol=1e-5, atol=1e-4)
        # Centres span the whole input (the bug scaled them by cfg size / input size).
        assert float(ours[0, :, 0].max()) < size and float(ours[0, :, 0].max()) > 0.9 * size
        box_err, obj_err, _, _ = reference(model, cfg, weights, x)
        assert box_err < 1e-3 and obj_err < 1e-3, (size, box_err, obj_err)


def test_a_size_off_the_stride_is_refused_in_one_line(saved_models):
    model, _, _ = saved_models("yolov3-tiny")
    with pytest.raises(ConfigError, match=r"input 400x400: .*multiples of 32 pixels"):
        model(torch.rand(1, 3, 400, 400))


def test_a_classifier_runs_only_at_its_size(repo_cfg):
    model = Darknet.from_cfg(repo_cfg / "lenet5.cfg").eval()
    _, h, w = model.input_shape
    with pytest.raises(ConfigError, match=rf"this network runs at {w}x{h} only"):
        model(torch.rand(1, model.input_shape[0], h * 2, w * 2))


def test_at_size_is_the_same_detector_built_for_that_input(saved_models, repo_cfg):
    model, cfg, weights = saved_models("yolov3-tiny")
    small = model.at_size(256)
    assert small.input_shape == (3, 256, 256) and model.input_shape == (3, 416, 416)
    built = Darknet.from_cfg(cfg, size=256)
    built.load_weights(weights)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), built.eval()(x), rtol=1e-5, atol=1e-4)
    with pytest.raises(ConfigError, match="multiples of 32"):
        model.at_size(250)
    with pytest.raises(ConfigError, match="only"):
        Darknet.from_cfg(repo_cfg / "lenet5.cfg").at_size(64)
