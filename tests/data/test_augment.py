"""Training augmentation: boxes follow the image, seeds reproduce, bad configs are refused."""

from __future__ import annotations

import numpy as np
import pytest

from yolo_prune.data.augment import AugmentConfig, apply_transform, build_transform


def _image(h=60, w=100):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


BOXES = np.array([[10.0, 20.0, 50.0, 40.0], [60.0, 5.0, 90.0, 55.0]], dtype=np.float32)
CLASSES = np.array([3, 7])


def test_plain_resize_scales_boxes():
    t = build_transform((120, 200))
    image, boxes, classes = apply_transform(t, _image(), BOXES, CLASSES, seed=1)
    assert image.shape == (120, 200, 3)
    np.testing.assert_allclose(boxes, BOXES * 2, atol=1e-4)
    assert classes.tolist() == [3, 7]


def test_letterbox_keeps_aspect_and_pads():
    t = build_transform((100, 100), letterbox=True)
    image, boxes, _ = apply_transform(t, _image(), BOXES, CLASSES, seed=1)
    assert image.shape == (100, 100, 3)
    # 100x60 fits as 100x60, centred vertically: 20 rows of grey above
    np.testing.assert_allclose(boxes, BOXES + np.array([0, 20, 0, 20]), atol=1e-4)
    assert (image[:19] == 127).all()


def test_flip_mirrors_boxes():
    aug = AugmentConfig(flip=1.0, hsv_p=0.0, affine_p=0.0)
    image, boxes, _ = apply_transform(
        build_transform((60, 100), augment=aug), _image(), BOXES, CLASSES, seed=0
    )
    np.testing.assert_array_equal(image, _image()[:, ::-1])
    expected = BOXES.copy()
    expected[:, [0, 2]] = 100 - BOXES[:, [2, 0]]
    np.testing.assert_allclose(boxes, expected, atol=1e-4)


def test_same_seed_same_sample_and_boxes_stay_inside():
    t = build_transform((64, 64), augment=AugmentConfig(scale=0.5, translate=0.3, affine_p=1.0))
    runs = [apply_transform(t, _image(), BOXES, CLASSES, seed=s) for s in (5, 5, 6)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[2][0])
    for _, boxes, classes in runs:
        assert len(boxes) == len(classes)
        assert (
            (boxes >= 0).all() and (boxes[:, [0, 2]] <= 64).all() and (boxes[:, [1, 3]] <= 64).all()
        )
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"flip": 1.5}, "flip"), ({"scale": 1.0}, "scale"), ({"translate": -0.1}, "translate")],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kwargs)
