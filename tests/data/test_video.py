"""Video io: frames and sizes survive a round trip, writes are atomic, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest

from yolo_prune.data.video import VideoReader, VideoWriter, is_video_path
from yolo_prune.errors import DataError


def _frames(n: int, w: int = 64, h: int = 48) -> list[np.ndarray]:
    return [np.full((h, w, 3), 20 * i, dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_round_trip_keeps_count_size_and_rate(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    with VideoWriter(path, fps=25.0, size=(64, 48)) as writer:
        for f in _frames(7):
            writer.write(f)
    assert writer.frames == 7
    with VideoReader(path) as reader:
        frames = list(reader)
        assert (reader.width, reader.height) == (64, 48)
        assert reader.fps == pytest.approx(25.0)
        assert reader.frame_count == 7
    assert len(frames) == 7 and frames[0].shape == (48, 64, 3)
    # Lossy codecs (and a YUV round trip), but flat grey frames keep their level and order.
    levels = [float(f.mean()) for f in frames]
    assert all(abs(m - 20 * i) < 8 for i, m in enumerate(levels)), levels
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]  # no temporary left


def test_an_interrupted_write_leaves_no_file(tmp_path):
    path = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, fps=10, size=(64, 48)) as writer:
        writer.write(_frames(1)[0])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_wrong_frame_size_and_unknown_container(tmp_path):
    with (
        pytest.raises(DataError, match="frame 0 is 32x48, but the video is 64x48"),
        VideoWriter(tmp_path / "a.mp4", fps=10, size=(64, 48)) as writer,
    ):
        writer.write(np.zeros((48, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"cannot write \.gif videos"):
        VideoWriter(tmp_path / "a.gif", fps=10, size=(64, 48))


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="^missing.mp4: no such video file"):
        VideoReader(tmp_path / "missing.mp4")
    (tmp_path / "fake.mp4").write_text("not a video")
    with pytest.raises(DataError, match="^fake.mp4: OpenCV cannot open it as a video"):
        VideoReader(tmp_path / "fake.mp4")
    with pytest.raises(DataError, match="is a folder"):
        VideoReader(tmp_path)


def test_real_street_video(shared_data):
    with VideoReader(shared_data / "video" / "street_360p.mp4") as reader:
        assert (reader.width, reader.height, reader.frame_count) == (640, 360, 319)
        first = next(iter(reader))
    assert first.shape == (360, 640, 3)
    assert is_video_path("x.MP4") and not is_video_path("x.jpg")
