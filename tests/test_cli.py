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
    assert res["elbo"] <= res["log_likelihood"] + 3 * res["log_likelihood_stderr"]

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
    assert main(["train", str(cfg), "--out", str(out), *sets, "--set", "train.epochs=3", "--resume"]) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no checkpoint" in err
