"""A recipe's evaluation stages record what they estimated and are recomputed when it changes
(issue 28 item 2): a resumed training that moves the best checkpoint, and a changed
``eval.num_samples``; blocks of another estimand are set aside, not mixed. At the tiny size of
``tests/runs/test_reproduce.py`` (``TINY``)."""

import json
from pathlib import Path

import pytest
import torch
from test_reproduce import TINY

from vaelab.runs.reproduce import reproduce
from vaelab.runs.run import eval_config, load_run
from vaelab.runs.stages import block_estimand, evaluate_in_blocks, model_digest

#: iwae_k1 with every stage, small
SETS = [*TINY, "recipe.ais.points=8", "recipe.bdmc.points=4"]


def _fresh(run_dir: Path, tmp: Path, ec, **kw):
    """The IS of the run folder's best checkpoint now, computed from nothing in ``tmp``."""
    return evaluate_in_blocks(load_run(run_dir), ec, tmp, **kw)


@pytest.mark.slow
def test_more_epochs_recompute_every_stage_on_the_new_best_checkpoint(tmp_path):
    """3 epochs, then the same command with ``train.epochs=6``: the best epoch moves, and IS,
    AIS, AIS − IS and BDMC are of the new best checkpoint (its digest and epoch recorded), equal
    to a fresh evaluation of it; the epoch-3 stage files and blocks are set aside."""
    first = reproduce("iwae_static", tmp_path, variants=["iwae_k1"],
                      overrides=[*SETS, "train.epochs=3"])[0]
    run_dir = Path(first["run_dir"])
    old = first["estimands"]
    again = reproduce("iwae_static", tmp_path, variants=["iwae_k1"],
                      overrides=[*SETS, "train.epochs=6"])[0]
    best = again["budget"]["best_epoch"]
    assert again["budget"]["epochs"] == 6 and best > first["budget"]["best_epoch"]
    run = load_run(run_dir)
    for stage in ("is", "ais", "bdmc"):
        assert again["estimands"][stage]["epoch"] + 1 == best, stage  # rows count from 1
        assert again["estimands"][stage]["model_sha256"] == model_digest(run), stage
        assert again["estimands"][stage]["model_sha256"] != old[stage]["model_sha256"], stage
    fresh = _fresh(run_dir, tmp_path / "fresh", run.cfg.eval)
    assert again["is"]["log_likelihood"] == pytest.approx(fresh.summary()["log_likelihood"],
                                                          rel=1e-12)
    ec_ais = eval_config(run.cfg, ["eval.method=ais", "eval.limit=8", "eval.ais_steps=5",
                                   "eval.ais_chains=2", "eval.ais_leapfrog=2", "eval.exact=false"])
    ais = _fresh(run_dir, tmp_path / "fresh_ais", ec_ais, block=100)
    assert again["ais"]["log_likelihood"] == pytest.approx(ais.summary()["log_likelihood"],
                                                           rel=1e-12)
    aside = run_dir / "reproduce" / "set_aside"
    assert {p.name for p in aside.iterdir()} >= {"is-1", "ais-1", "is.json-1", "ais.json-1",
                                                 "ais_vs_is.json-1", "bdmc.json-1"}
    saved = json.loads((run_dir / "reproduce" / "is.json").read_text())
    assert saved["estimand"] == again["estimands"]["is"]  # the stage file records it too
    # a third run with nothing changed reuses every stage as written
    third = reproduce("iwae_static", tmp_path, variants=["iwae_k1"],
                      overrides=[*SETS, "train.epochs=6"])[0]
    assert third["is"] == again["is"] and third["bdmc"] == again["bdmc"]


def test_a_changed_num_samples_is_estimated_not_ignored(tmp_path):
    """``--set eval.num_samples=30`` on a finished folder evaluated with K = 20: IS is computed
    again with K = 30 (recorded in the result), equal to a fresh K = 30 evaluation, the K = 20
    blocks set aside; AIS (another estimand) is kept."""
    sets = [*TINY, "recipe.ais.points=8", "recipe.bdmc.points=0"]
    first = reproduce("iwae_static", tmp_path, variants=["iwae_k1"], overrides=sets)[0]
    run_dir = Path(first["run_dir"])
    again = reproduce("iwae_static", tmp_path, variants=["iwae_k1"],
                      overrides=[*sets, "eval.num_samples=30"])[0]
    assert first["is"]["num_samples"] == 20 and again["is"]["num_samples"] == 30
    assert again["estimands"]["is"]["eval"]["num_samples"] == 30
    assert again["budget"]["steps"] == first["budget"]["steps"]  # training was not rerun
    run = load_run(run_dir)
    ec = run.cfg.eval.model_copy(update={"num_samples": 30})
    fresh = _fresh(run_dir, tmp_path / "fresh", ec)
    assert again["is"]["log_likelihood"] == pytest.approx(fresh.summary()["log_likelihood"],
                                                          rel=1e-12)
    assert again["ais"] == first["ais"]  # AIS estimates what it did: reused
    assert (run_dir / "reproduce" / "set_aside" / "is-1").is_dir()
    result = json.loads((run_dir / "reproduce" / "result.json").read_text())
    assert result["is"]["num_samples"] == 30


def test_an_old_block_without_a_digest_is_matched_on_its_epoch(tmp_path):
    """A block written before blocks recorded the parameters' digest (the version-2 fixture's
    kind) is reused when the rest of its stamp, the epoch included, matches, and set aside when
    the epoch differs."""
    reproduce("iwae_static", tmp_path, variants=["iwae_k1"],
              overrides=[*TINY, "recipe.ais.points=0", "recipe.bdmc.points=0"])
    run = load_run(tmp_path / "iwae_k1" / "seed0")
    from vaelab.runs.checkpoint import load_checkpoint, save_checkpoint

    folder = tmp_path / "blocks"
    whole = evaluate_in_blocks(run, run.cfg.eval, folder, block=10)
    path = folder / "block_0000.pt"
    saved = load_checkpoint(path)
    assert saved["stamp"] == block_estimand(run, run.cfg.eval, 10)
    for key in ("model_sha256", "curve_ks"):
        del saved["stamp"][key]
    save_checkpoint(path, saved)
    again = evaluate_in_blocks(run, run.cfg.eval, folder, block=10)
    assert torch.equal(again.log_px, whole.log_px) and path.is_file()
    saved["stamp"]["epoch"] += 1
    save_checkpoint(path, saved)
    evaluate_in_blocks(run, run.cfg.eval, folder, block=10)
    assert (tmp_path / "set_aside" / "blocks-1" / "block_0000.pt").is_file()
