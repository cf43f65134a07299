"""Flags every long-running subcommand shares read the same everywhere."""

from __future__ import annotations

import pytest

from yolo_prune.cli.main import main


@pytest.mark.parametrize("command", ["train", "prune", "sweep", "eval", "detect"])
def test_every_long_running_subcommand_takes_no_progress_and_device(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--no-progress", "--device", "--size"):
        assert flag in text, f"yolo-prune {command} lacks {flag}"


@pytest.mark.parametrize("command", ["prune", "sweep", "eval"])
def test_every_subcommand_that_times_a_model_takes_no_latency(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--no-latency" in capsys.readouterr().out
