"""Which code a run ran (:mod:`vaelab.runs.provenance`): the commit of a ``git archive``
snapshot (``export-subst``), of a checkout (with ``modified`` telling an edited package), none
for an installed copy; every ``metrics.jsonl`` row names the code that trained its epoch, and a
resume under other code shows both."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vaelab
from vaelab.resolve import load_config
from vaelab.runs.provenance import code_identity, code_label, identify
from vaelab.runs.train import train

ROOT = Path(vaelab.__file__).resolve().parent.parent
HAS_GIT = shutil.which("git") is not None and (ROOT / ".git").exists()
needs_git = pytest.mark.skipif(not HAS_GIT, reason="not a git checkout")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@needs_git
def test_a_checkout_reports_its_head_and_whether_the_package_was_edited():
    ident = code_identity()
    assert ident["commit"] == _git("rev-parse", "HEAD")
    assert ident["modified"] == bool(_git("status", "--porcelain", "--", "vaelab"))
    assert code_label().startswith(f"{vaelab.__version__}+{ident['commit'][:12]}")


@needs_git
def test_a_git_archive_snapshot_reports_the_archived_commit(tmp_path):
    """The snapshot has no .git: its commit comes from ``vaelab/_commit.py``, which
    ``git archive`` filled in (``.gitattributes``: export-subst)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "vaelab"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    code = "from vaelab.runs.provenance import code_identity; print(code_identity()['commit'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(tmp_path)})
    assert out.stdout.strip() == _git("rev-parse", "HEAD")


def test_an_unfilled_placeholder_outside_a_checkout_gives_no_commit(tmp_path):
    """An installed copy (no .git beside it, the placeholder unfilled): the version alone."""
    package = tmp_path / "site-packages" / "vaelab"
    package.mkdir(parents=True)
    ident = identify("$Format:%H$", package)
    assert ident == {"version": vaelab.__version__, "commit": None, "modified": None}
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert identify(commit, package)["commit"] == commit


def test_every_metrics_row_names_the_code_that_trained_it(tmp_path, monkeypatch):
    """Two epochs under this code, then a resume to 3 under another label: the rows say which
    code trained each epoch."""
    cfg = load_config(None, ["data.name=synthetic", "model.latent_dim=2",
                             "model.hidden_sizes=[8]", "train.epochs=2", "train.batch_size=100",
                             "train.progress=false"])
    train(cfg, tmp_path / "r")
    monkeypatch.setattr("vaelab.runs.train.code_label", lambda: "9.9.9+other")
    train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 3})}),
          tmp_path / "r", resume=True)
    rows = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["code"] for r in rows] == [code_label(), code_label(), "9.9.9+other"]
