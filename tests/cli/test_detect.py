"""``yolo-prune detect`` end to end: image, folder with bad files, video, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from yolo_prune.cli.main import main

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def model_args(shared_data: Path) -> list[str]:
    return [
        "--cfg",
        str(shared_data / "cfg" / "yolov3-tiny.cfg"),
        "--weights",
        str(shared_data / "weights" / "yolov3-tiny.weights"),
        "--size",
        "416",
    ]


def _records(out: Path) -> list[dict]:
    return json.loads((out / "detections.json").read_text())


def test_one_image(model_args, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    src = shared_data / "images" / "dog.jpg"
    assert main(["detect", *model_args, "--source", str(src), "--out", str(out)]) == 0
    records = _records(out)
    assert {r["category"] for r in records} == {"dog", "car", "truck", "bicycle"}
    dog = next(r for r in records if r["category"] == "dog")
    assert dog["image"] == "dog.jpg" and dog["category_id"] == 16 and 0.25 < dog["score"] <= 1
    x, y, w, h = dog["bbox"]
    assert x >= 0 and y >= 0 and x + w <= 768 and y + h <= 576  # original pixels
    annotated = cv2.imread(str(out / "dog.jpg"))
    assert annotated.shape == (576, 768, 3)
    assert "6 detections" in capsys.readouterr().out


def test_a_folder_skips_unreadable_files_with_a_warning(
    model_args, shared_data, tmp_path, capsys, caplog
):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_data / "images" / "person.jpg", src)
    shutil.copy(shared_data / "images" / "scream.jpg", src)
    (src / "notes.txt").write_text("not an image")
    (src / "broken.jpg").write_bytes((shared_data / "images" / "dog.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    assert main(["detect", *model_args, "--source", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("broken.jpg" in w for w in warnings) and any("notes.txt" in w for w in warnings)
    assert "skipped 2 unreadable file(s): broken.jpg, notes.txt" in printed
    assert "FPS" in printed
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "person.jpg", "scream.jpg"]
    records = _records(out)
    assert {r["image"] for r in records} == {"person.jpg"}  # the painting has no objects
    assert {"person", "dog"} <= {r["category"] for r in records}


def test_a_video_gives_a_video_of_the_same_size_and_frame_count(
    model_args, shared_data, tmp_path, capsys
):
    out = tmp_path / "out"
    src = shared_data / "video" / "street_360p.mp4"
    args = ["detect", *model_args, "--source", str(src), "--out", str(out), "--max-frames", "8"]
    assert main(args) == 0
    video = cv2.VideoCapture(str(out / "street_360p.mp4"))
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 8 and frames[0].shape == (360, 640, 3)
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
    records = _records(out)
    assert {r["image"] for r in records} <= set(range(8))
    people = {r["image"] for r in records if r["category"] == "person"}
    cars = {r["image"] for r in records if r["category"] == "car"}
    assert people and cars
    assert "8 frames" in capsys.readouterr().out


@pytest.mark.slow
def test_the_whole_street_video(model_args, shared_data, tmp_path):
    out = tmp_path / "out"
    src = shared_data / "video" / "street_360p.mp4"
    assert main(["detect", *model_args, "--source", str(src), "--out", str(out)]) == 0
    video = cv2.VideoCapture(str(out / "street_360p.mp4"))
    n = 0
    while video.read()[0]:
        n += 1
    assert n == 319
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 360)
    records = _records(out)
    assert len({r["image"] for r in records if r["category"] == "person"}) > 200
    assert len({r["image"] for r in records if r["category"] == "car"}) > 200


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "{tmp}/missing.mp4"], "missing.mp4: no such image, folder or video"),
        (["--source", "{tmp}/fake.mp4"], "fake.mp4: OpenCV cannot open it as a video"),
        (["--source", "{tmp}/fake.jpg"], "fake.jpg: not a readable image"),
        (["--source", "{tmp}/empty"], "empty: none of its files is a readable image"),
        (["--source", "{dog}", "--conf", "1.5"], "--conf 1.5; expected a score threshold"),
        (["--source", "{dog}", "--size", "400"], "--size 400; expected a multiple of 32"),
        (["--source", "{dog}", "--names", "{tmp}/two.names"], "2 names for a model with 80"),
    ],
    ids=["missing", "not-a-video", "not-an-image", "empty-folder", "conf", "size", "names"],
)
def test_bad_input_is_one_clear_error(model_args, shared_data, tmp_path, capsys, extra, message):
    (tmp_path / "fake.mp4").write_text("not a video")
    (tmp_path / "fake.jpg").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    (tmp_path / "two.names").write_text("a\nb\n")
    fill = {"tmp": str(tmp_path), "dog": str(shared_data / "images" / "dog.jpg")}
    extra = [e.format(**fill) for e in extra]
    code = main(["detect", *model_args, *extra, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("yolo-prune detect: error: ") and message in err[-1]
    assert not (tmp_path / "out" / "detections.json").exists()


def test_a_names_file_names_the_classes(model_args, shared_data, tmp_path):
    names = tmp_path / "my.names"
    names.write_text("\n".join(f"thing{i}" for i in range(80)) + "\n")
    out = tmp_path / "out"
    src = shared_data / "images" / "eagle.jpg"
    args = ["detect", *model_args, "--source", str(src), "--out", str(out), "--names", str(names)]
    assert main([*args, "--no-save", "--letterbox"]) == 0
    records = _records(out)
    assert [r["category"] for r in records] == ["thing14"]  # bird
    assert sorted(p.name for p in out.iterdir()) == ["detections.json"]
    assert np.isfinite(records[0]["score"])
