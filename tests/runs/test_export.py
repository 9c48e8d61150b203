"""An exported run's files (:mod:`vaelab.runs.export`): what is written reads back as the
4-decimal values, and a machine path anywhere stops the export before anything is written."""

import json

import pytest
import torch

from vaelab.runs.export import EXPORT_FORMAT, POINTS_FILE, read_points, write_export


def _run(tmp_path, overrides=()):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('[data]\nname = "synthetic"\n')
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "note": "ok"}) + "\n")
    result = {"format_version": EXPORT_FORMAT, "overrides": list(overrides),
              "is": {"num_samples": 7},
              "is_points": {"file": POINTS_FILE, "split": "test", "limit": None}}
    return run, result


def test_an_export_reads_back_as_its_four_decimals(tmp_path):
    """Three points written with 6 decimals read back rounded to 4, with the split and limit;
    the config and metrics are copied byte for byte."""
    run, result = _run(tmp_path)
    log_px = torch.tensor([-90.123456, -1.00005, 0.0], dtype=torch.float64)
    elbo = torch.tensor([-95.5, -2.25, -3.33333], dtype=torch.float64)
    target = write_export(tmp_path / "out" / "seed0", run, result, log_px, elbo)
    back = read_points({**json.loads((target / "result.json").read_text()), "_dir": str(target)})
    assert back[0] == {"split": "test", "limit": None}
    assert back[1].tolist() == [-90.1235, float(f"{-1.00005:.4f}"), 0.0]
    assert back[2].tolist() == [-95.5, -2.25, -3.3333]
    assert (target / "config.toml").read_text() == (run / "config.toml").read_text()
    assert (target / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()
    assert read_points({"_dir": str(target)}) is None  # no IS stage


def test_a_machine_path_stops_the_export_before_any_file(tmp_path):
    run, result = _run(tmp_path, overrides=["data.path=/home/me/mnist"])
    with pytest.raises(ValueError, match="would export a machine path, result.json.overrides"):
        write_export(tmp_path / "out", run, result, torch.zeros(1), torch.zeros(1))
    assert not (tmp_path / "out").exists()
