"""End-to-end jobs a user runs: prune a detector and report, sweep ratios and methods."""
