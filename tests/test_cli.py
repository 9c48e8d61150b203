"""CLI smoke test on seeded synthetic data (seconds): train → evaluate --json → sample."""

import json

from vaelab.cli import main


def test_train_evaluate_sample(tmp_path, capsys, tiny_cfg_overrides):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('[data]\nname = "synthetic"\n[model]\nlikelihood = "bernoulli"\n')
    out = tmp_path / "run"
    sets = [a for o in tiny_cfg_overrides for a in ("--set", o)]
    assert main(["train", str(cfg), "--out", str(out), *sets, "--evaluate"]) == 0
    for f in ("config.toml", "metrics.jsonl", "report.md", "curves.png", "reconstructions.png",
              "samples.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / f).is_file(), f
    assert "log_likelihood" in (out / "report.md").read_text()
    capsys.readouterr()

    assert main(["evaluate", str(out), "--num-samples", "64", "--limit", "30", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("elbo", "log_likelihood", "log_likelihood_stderr", "num_samples", "num_points"):
        assert key in res, key
    assert res["num_samples"] == 64 and res["num_points"] == 30
    # against an independent estimate, paired per point: the ELBO from 20 fresh single draws
    # (seeds 1..20) lies below the K = 64 IS estimate (seed 0) on the same 30 points, within 3
    # standard errors of the mean paired difference. A log p̂ that lost its −log K (4.2 nats) or
    # took a mean instead of a logsumexp would fall below it.
    from vaelab.runs.run import eval_config, evaluate, load_run
    from vaelab.runs.sharded import evaluate_sharded

    run = load_run(out)  # the CLI's estimator: blocks of eval.batch_size, the same on any W
    is64 = evaluate_sharded(run, eval_config(run.cfg, ["eval.num_samples=64", "eval.limit=30"]))
    assert abs(float(is64.log_px.mean()) - res["log_likelihood"]) < 1e-6  # the CLI's number
    elbo = sum(evaluate(run, eval_config(run.cfg, ["eval.num_samples=1", "eval.limit=30",
                                                   f"eval.seed={s}"])).log_px
               for s in range(1, 21)) / 20  # (30,)
    diff = (is64.log_px - elbo).double()  # (30,)
    assert float(diff.mean()) >= -3 * float(diff.std()) / 30**0.5

    png = tmp_path / "s.png"
    assert main(["sample", str(out), "-n", "16", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the saved config alone reproduces the run's configuration
    assert main(["config", "show", str(out / "config.toml")]) == 0
    shown = capsys.readouterr().out
    assert 'name = "synthetic"' in shown and "latent_dim = 4" in shown


def test_resume_via_cli_extends_a_run(tmp_path, tiny_cfg_overrides):
    out = tmp_path / "run"
    sets = [a for o in tiny_cfg_overrides for a in ("--set", o)]
    assert main(["train", str(out.parent / "none.toml"), "--out", str(out)]) == 2  # no such file
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    assert main(["train", str(cfg), "--out", str(out), *sets]) == 0
    more = ["--set", "train.epochs=3", "--resume"]
    assert main(["train", str(cfg), "--out", str(out), *sets, *more]) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no checkpoint" in err


def test_report_reconstructs_points_spread_over_the_test_split(tmp_path, tiny_cfg_overrides):
    """Issue 9: the report drew its reconstructions from ``test[:32]`` (all zeros on binarized
    MNIST, whose test file is sorted by digit); it now uses the one spread subset rule."""
    import torch

    from vaelab.data.subsets import spread_indices
    from vaelab.resolve import load_config
    from vaelab.runs.report import write_report
    from vaelab.runs.train import train

    result = train(load_config(None, tiny_cfg_overrides), tmp_path / "run")
    run = result.run()
    seen = []
    reconstruct = run.vae.reconstruct
    run.vae.reconstruct = lambda x: seen.append(x) or reconstruct(x)
    write_report(run)
    test = run.data.test  # (100, 64)
    expected = run.pre.eval_split(test[spread_indices(test.shape[0], 32)], 0)
    assert len(seen) == 1 and torch.equal(seen[0], expected)
    assert not torch.equal(seen[0], run.pre.eval_split(test[:32], 0))


def test_version_list_and_plain_help(capsys):
    import pytest

    from vaelab import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"vaelab {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("priors:", "likelihoods:", "families:", "networks:", "objectives:", "datasets:"):
        assert kind in out, kind
    assert "  vamp — " in out and "components: int = 10" in out and "``" not in out
    assert main(["list", "priorz"]) == 2
    assert "kinds: " in capsys.readouterr().err
