"""The verified downloader, exercised offline through file:// URLs."""

from __future__ import annotations

import hashlib

import pytest

from yolo_prune.hub import DownloadError, WeightsEntry, download, load_manifest


def _entry(src, *, size=None, sha=None):
    data = src.read_bytes()
    return {
        "tiny": WeightsEntry(
            name="tiny", file="tiny.weights", cfg="cfg/yolov3-tiny.cfg", url=src.as_uri(),
            bytes=len(data) if size is None else size,
            sha256=sha or hashlib.sha256(data).hexdigest(),
        )
    }  # fmt: skip


def test_manifest_lists_the_canonical_files():
    manifest = load_manifest()
    assert manifest["yolov4"].bytes == 257_717_640
    assert manifest["yolov4-tiny"].sha256.startswith("037676f0")
    assert set(manifest) == {"yolov4", "yolov4-tiny", "yolov3", "yolov3-tiny"}


def test_download_verifies_and_reuses(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"darknet" * 1000)
    out = download("tiny", dest_dir=tmp_path / "w", manifest=_entry(src), progress=False)
    assert out.read_bytes() == src.read_bytes()
    assert download("tiny", dest_dir=tmp_path / "w", manifest=_entry(src), progress=False) == out


@pytest.mark.parametrize(
    ("size", "sha", "match"),
    [
        (None, "0" * 64, r"sha256 .* does not match the manifest's 0000"),
        (6999, None, r"more than the expected 6,999 bytes"),
        (7001, None, r"got 7,000 bytes, expected 7,001"),
    ],  # fmt: skip
)
def test_download_refuses_a_mismatch_and_leaves_nothing(tmp_path, size, sha, match):
    src = tmp_path / "src.bin"
    src.write_bytes(b"darknet" * 1000)
    dest = tmp_path / "w"
    with pytest.raises(DownloadError, match=match):
        download("tiny", dest_dir=dest, manifest=_entry(src, size=size, sha=sha), progress=False)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_unknown_name_lists_choices():
    from yolo_prune.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"unknown weights 'yolov5'; choose one of: yolov3, yolov3-tiny"
    ):
        download("yolov5", manifest=load_manifest())
