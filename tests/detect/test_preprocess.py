"""Pre-processing: Darknet's resize and letterbox geometry, pixel values, the way back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from yolo_prune.detect import letterbox_geometry, preprocess, resize_geometry

cv2 = pytest.importorskip("cv2")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_letterbox_geometry_is_darknets():
    # dog.jpg (768x576) into 416x416: Darknet's letterbox_image gives 416x312, 52 px above.
    t = letterbox_geometry(768, 576, 416)
    assert (round(768 * t.scale_x), round(576 * t.scale_y)) == (416, 312)
    assert (t.pad_x, t.pad_y) == (0, 52)
    # A tall image: integer division as in Darknet, (416 * 352) // 448 = 326, odd pad at right.
    t = letterbox_geometry(352, 448, 416)
    assert round(352 * t.scale_x) == 326 and t.pad_x == (416 - 326) // 2 == 45
    assert t.scale_y == 416 / 448 and t.pad_y == 0


def test_plain_resize_matches_cv2_resize_in_rgb():
    image = _image(100, 150)
    x, (t,) = preprocess([image], (64, 96))
    expected = cv2.resize(image, (96, 64), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    expected = torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x[0], expected)
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (96 / 150, 64 / 100, 0, 0)


def test_letterbox_fills_borders_with_exactly_half_and_keeps_the_image():
    image = _image(50, 100)
    x, (t,) = preprocess([image], 64, letterbox=True)
    assert (t.pad_x, t.pad_y) == (0, 16)
    top, body, bottom = x[0, :, :16], x[0, :, 16:48], x[0, :, 48:]
    assert torch.all(top == 0.5) and torch.all(bottom == 0.5)
    expected = cv2.resize(image, (64, 32), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    torch.testing.assert_close(body, torch.from_numpy(expected.copy()).permute(2, 0, 1) / 255)


def test_a_batch_of_different_sizes_equals_one_at_a_time():
    images = [_image(60, 80, 1), _image(90, 45, 2), _image(64, 64, 3)]
    for letterbox in (False, True):
        x, ts = preprocess(images, 64, letterbox=letterbox)
        for i, image in enumerate(images):
            xi, (ti,) = preprocess([image], 64, letterbox=letterbox)
            torch.testing.assert_close(x[i], xi[0])
            assert ts[i] == ti


def test_rejects_non_bgr_arrays():
    with pytest.raises(ValueError, match=r"expected \[H, W, 3\] BGR"):
        preprocess([np.zeros((10, 10), dtype=np.uint8)], 32)


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 2000),
    h=st.integers(1, 2000),
    letterbox=st.booleans(),
    box=st.tuples(*(st.floats(0, 1) for _ in range(4))),
)
def test_to_original_inverts_the_mapping(w, h, letterbox, box):
    geometry = letterbox_geometry if letterbox else resize_geometry
    t = geometry(w, h, (320, 416))
    x0, x1 = sorted((box[0] * w, box[2] * w))
    y0, y1 = sorted((box[1] * h, box[3] * h))
    original = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float64)
    net = original * torch.tensor([t.scale_x, t.scale_y] * 2, dtype=torch.float64)
    net = net + torch.tensor([t.pad_x, t.pad_y] * 2, dtype=torch.float64)
    torch.testing.assert_close(t.to_original(net), original)


def test_to_original_clips_to_the_image():
    t = resize_geometry(200, 100, 416)
    out = t.to_original(torch.tensor([[-20.0, -5.0, 500.0, 430.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 200.0, 100.0]]))
