"""``vaelab compare`` on run folders of other config versions and on folder trees with symbolic
links (issue 28, item 16): a config saved by an older vaelab is read as it meant when it was
saved (:func:`vaelab.resolve.resolve` with ``saved=True``), one saved by a newer vaelab is left
out in one line naming it, and a tree whose links loop is walked once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vaelab.config import CONFIG_VERSION, dump_toml, to_dict
from vaelab.resolve import resolve
from vaelab.runs.compare import compare, find_runs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _old_run(dest: Path) -> Path:
    """A run folder vaelab 0.1.0 wrote (config version 1: no ``version``, no ``data.subset``,
    which then meant the first N points)."""
    shutil.copytree(FIXTURES / "run_v1_gaussian", dest)
    return dest


def _current_run(dest: Path, seed: int, **data) -> Path:
    """The old run's folder with its config saved by this vaelab: the old config's meaning,
    at ``seed``, with ``data`` keys changed."""
    _old_run(dest)
    raw = to_dict(resolve(tomllib.loads((dest / "config.toml").read_text()), saved=True))
    raw["train"]["seed"] = seed
    raw["data"].update(data)
    (dest / "config.toml").write_text(dump_toml(resolve(raw)))
    return dest


def test_an_old_config_is_tabled_as_it_meant_when_it_was_saved(tmp_path):
    """A version-1 run and a current run of the same meaning are one cell (the old one's
    missing keys are its old defaults, not "—"); a current run that reads another subset is a
    cell labelled by the value each one means."""
    _old_run(tmp_path / "old")
    _current_run(tmp_path / "same", seed=1)
    _current_run(tmp_path / "spread", seed=0, subset="spread")
    comp = compare([tmp_path])
    assert [[r.dir.name for r in runs] for runs in comp.cells] == [["old", "same"], ["spread"]]
    assert comp.label_keys == ["data.subset"]
    assert [comp.label(i) for i in range(2)] == [{"data.subset": "first"},
                                                 {"data.subset": "spread"}]
    assert "—" not in comp.markdown().splitlines()[2]


def test_a_config_from_a_newer_vaelab_is_left_out_in_one_line(tmp_path, capsys):
    _current_run(tmp_path / "current", seed=0)
    newer = _current_run(tmp_path / "newer", seed=1)
    text = (newer / "config.toml").read_text()
    (newer / "config.toml").write_text(text.replace(f"version = {CONFIG_VERSION}\n",
                                                    f"version = {CONFIG_VERSION + 1}\n"))
    assert f"version = {CONFIG_VERSION + 1}" in (newer / "config.toml").read_text()
    comp = compare([tmp_path])
    assert [[r.dir.name for r in runs] for runs in comp.cells] == [["current"]]
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(newer) in err[0], err
    assert f"version {CONFIG_VERSION + 1}" in err[0] and "newer" in err[0]
    # nothing else to table: the same line as the error
    with pytest.raises(ValueError, match=f"newer vaelab \\(config version {CONFIG_VERSION + 1};"):
        compare([newer])


@pytest.mark.slow
def test_a_tree_whose_links_loop_is_walked_once(tmp_path):
    """Two links in a folder back to the tree's root (2**40 paths before the kernel's ELOOP
    limit, if links were followed blindly); a link to a run folder outside the tree counts it
    once. ``vaelab compare`` is a real process that must end."""
    tree = tmp_path / "tree"
    _current_run(tree / "a" / "run0", seed=0)
    _current_run(tmp_path / "elsewhere" / "run1", seed=1)
    for name in ("up1", "up2"):
        (tree / "a" / name).symlink_to(tree, target_is_directory=True)
    (tree / "linked").symlink_to(tmp_path / "elsewhere" / "run1", target_is_directory=True)
    (tree / "a" / "again").symlink_to(tree / "linked", target_is_directory=True)
    found = find_runs([tree])
    assert sorted(p.resolve() for p in found) == sorted(
        [(tree / "a" / "run0").resolve(), (tmp_path / "elsewhere" / "run1").resolve()]), found
    r = subprocess.run([sys.executable, "-m", "vaelab", "compare", str(tree)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 1 and "| 0 1 |" in rows[0], r.stdout
