"""Run reports and the latent-space pictures: PCA, active units and KL per unit against hand
computations and closed forms (the PPCA model of tests/ground_truth.py has an exact posterior),
``vaelab report DIR --html`` on tiny trained runs, and the HTML page rendered by a real
headless Chromium (slow)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pyro
import pytest
import torch

from ground_truth import SIGMA, exact_posterior, make_ppca, sample_ppca
from vaelab.cli import main
from vaelab.inference.latent_space import (
    LatentStats,
    activity,
    kl_per_unit,
    latent_stats,
    pca,
    posterior_means,
    traverse,
)

LATENT_PNGS = ("latent_embedding.png", "latent_traversals.png", "latent_kl.png")


# --------------------------------------------------------------------------------------------
# the numbers behind the pictures


def test_pca_of_four_points_matches_the_hand_computation():
    # (±2, 0), (0, ±1): mean 0, covariance diag(8/3, 2/3) with divisor B − 1 = 3, so PC1 = e1
    # with variance 8/3 (80 % of the total 10/3), PC2 = e2 with 2/3, coordinates = the points
    x = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, -1.0], [0.0, 1.0]]) + torch.tensor([5.0, -3])
    emb = pca(x, 2)
    torch.testing.assert_close(emb.components, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(emb.variance, torch.tensor([8 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(emb.explained, torch.tensor([0.8, 0.2], dtype=torch.float64))
    torch.testing.assert_close(emb.coords, (x - x.mean(0)).double())


def test_pca_recovers_the_principal_axes_of_a_known_covariance():
    # n = 20000 draws of N(0, R diag(9, 4, 1, 0.25) Rᵀ), R a seeded random rotation. The sampling
    # error of the leading axis (angle to the true one) has sd ≈ sqrt(λ1 λ2 / (n (λ1 − λ2)²))
    # = 0.0085 rad; of the second ≈ 0.011 rad: tolerance 0.05 rad (> 4 sd). A sample variance
    # has relative sd sqrt(2 / n) = 1 %: tolerance 5 %.
    g = torch.Generator().manual_seed(0)
    R, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    lam = torch.tensor([9.0, 4.0, 1.0, 0.25], dtype=torch.float64)
    x = (torch.randn(20000, 4, generator=g, dtype=torch.float64) * lam.sqrt()) @ R.T + 3.0
    emb = pca(x, 2)
    for i in range(2):
        cos = float((emb.components[i] @ R[:, i]).abs())
        assert math.acos(min(cos, 1.0)) < 0.05, (i, cos)
        assert abs(float(emb.variance[i]) / float(lam[i]) - 1) < 0.05
    torch.testing.assert_close(emb.explained, lam[:2] / lam.sum(), atol=0.01, rtol=0)
    # the embedding is the centred data projected on the axes
    torch.testing.assert_close(emb.coords, (x - x.mean(0)) @ emb.components.T)


def test_active_units_on_a_constructed_case():
    # B = 1000 alternating ±a: Var (divisor B − 1) = a² B / (B − 1); a = 1 → 1.001,
    # a = 0.05 → 0.0025 (inactive), a = 0.1 → 0.01001 (just active), constant → 0
    sign = torch.tensor([1.0, -1.0]).repeat(500)  # (1000,)
    means = torch.stack([sign, 0.05 * sign, 0.1 * sign, torch.full_like(sign, 0.7)], 1)
    a = activity(means)
    expected = torch.tensor([1.0, 0.0025, 0.01, 0.0], dtype=torch.float64) * 1000 / 999
    torch.testing.assert_close(a, expected)
    stats = LatentStats(means, a, None, "")
    assert stats.active.tolist() == [True, False, True, False] and stats.num_active == 2
    assert stats.ranked(2) == [0, 2]
    # categorical: the K class variances of a variable are summed: q(z_1 | x) alternates
    # between (1, 0) and (0, 1) → 2 × 1000/4/999; variable 2 is fixed at (0.5, 0.5) → 0
    q1 = torch.stack([(1 + sign) / 2, (1 - sign) / 2], 1)  # (1000, 2)
    probs = torch.stack([q1, torch.full_like(q1, 0.5)], 1)  # (1000, 2 variables, 2 classes)
    torch.testing.assert_close(activity(probs),
                               torch.tensor([0.5 * 1000 / 999, 0.0], dtype=torch.float64))


def _ppca_points(n=500):
    vae, W, b = make_ppca(D=6, d=2, sigma=SIGMA, seed=0)
    return vae, W, b, sample_ppca(n, W, b, SIGMA, seed=1)


def test_posterior_means_and_kl_per_dimension_match_the_closed_form():
    """PPCA with the guide at the exact posterior q(z | x) = N(A x + c, diag s²): the means
    are A x + c, and the mean KL per dimension against N(0, 1) is
    ½ mean_x(μ_u² + s_u² − 1 − log s_u²), computed here by hand (float64)."""
    vae, W, b, x = _ppca_points()
    A, c, s = exact_posterior(W, b, SIGMA)
    mu = x @ A.T + c  # (500, 2)
    torch.testing.assert_close(posterior_means(vae, x, batch_size=128), mu)
    kl, how = kl_per_unit(vae, x, batch_size=128)
    assert how == "closed form"
    expected = 0.5 * (mu**2 + s**2 - 1 - torch.log(s**2)).mean(0)  # (2,)
    torch.testing.assert_close(kl, expected, rtol=1e-10, atol=1e-12)
    # summed over dimensions it is the KL of the whole posterior (torch's own formula)
    q, p = vae.inference.posterior_dist(x), vae.generative.prior()
    total = torch.distributions.kl_divergence(q, p).mean()
    torch.testing.assert_close(kl.sum(), total, rtol=1e-10, atol=1e-12)

    # a unit whose posterior mean ignores x carries no information: inactive, and it is the
    # one the activity ranks last
    enc = vae.inference.encoder.linear_layers[0]
    with torch.no_grad():
        enc.weight[1].zero_()  # μ_2 = c_2 for every x
    stats = latent_stats(vae, x)
    assert stats.activity[1] == 0 and stats.active.tolist() == [True, False]
    torch.testing.assert_close(stats.activity[0], mu[:, 0].var(), rtol=1e-10, atol=0)


def test_traversals_of_a_linear_decoder_move_along_its_columns():
    """E[x | z] = W z + b, so setting unit u to t (a standard normal prior: centre 0, scale 1)
    moves the decoded mean by W[:, u] (t − t') between two columns, and column t holds
    W z' + b with z'_u = t."""
    vae, W, b, x = _ppca_points(50)
    z0 = posterior_means(vae, x)[3]  # (2,)
    decoded, t = traverse(vae, z0, [1, 0], steps=5)  # (2, 5, 6)
    torch.testing.assert_close(t, torch.linspace(-3, 3, 5))
    for row, u in enumerate([1, 0]):
        for j in range(5):
            z = z0.clone()
            z[u] = t[j]
            torch.testing.assert_close(decoded[row, j], W @ z + b)


def test_monte_carlo_means_of_a_flow_guide_do_not_turn_noise_into_activity():
    """An IAF guide has no closed-form mean: 64 draws are averaged. With an encoder whose
    output ignores x, q(z | x) is the same for every x, so every unit is inactive; shared base
    noise gives every point the same average (activity 0), where independent draws would show
    Var(mean of 64) = Var_q(z_u) / 64, above 1e-3 here."""
    from vaelab.resolve import load_config
    from vaelab.vae import build_vae

    vae = build_vae(load_config(None, ["data.name=synthetic", "model.latent_dim=3",
                                       "guide.family=iaf"]), 64)
    with torch.no_grad():
        vae.inference.encoder.linear_layers[-1].weight.zero_()  # h(x) = the bias, for all x
    x = torch.rand(200, 64).round()
    assert float(activity(posterior_means(vae, x)).max()) < 1e-10
    q = vae.inference.posterior_dist(x)
    naive = activity(q.sample((64,)).mean(0))  # (3,) independent draws per point
    assert float(naive.min()) > 1e-3


def test_kl_per_unit_of_a_categorical_latent_and_a_prior_that_does_not_factorize():
    from vaelab.resolve import load_config
    from vaelab.vae import build_vae

    cat = load_config(None, [
        "data.name=synthetic", "model.prior=categorical", "model.hidden_sizes=[8]",
        'model.latent={name = "categorical", num_variables = 3, num_classes = 4, '
        'prior = "learned"}'])
    vae = build_vae(cat, 64)
    with torch.no_grad():
        vae.generative.prior.logits.normal_()  # a non-uniform prior
    x = torch.rand(40, 64).round()
    kl, how = kl_per_unit(vae, x, batch_size=16)
    # torch's own categorical KL, variable by variable
    q = torch.distributions.Categorical(logits=vae.inference.logits(x))  # batch (40, 3)
    p = torch.distributions.Categorical(logits=vae.generative.prior.logits)  # batch (3,)
    expected = torch.distributions.kl_divergence(q, p).double().mean(0)  # (3,)
    assert how == "closed form"
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-6)
    assert posterior_means(vae, x).shape == (40, 3, 4)

    mog = build_vae(load_config(None, ["data.name=synthetic", "model.latent_dim=3",
                                       "model.prior=mog"]), 64)
    kl, how = kl_per_unit(mog, x)
    assert kl is None and "does not factorize" in how


# --------------------------------------------------------------------------------------------
# vaelab report DIR [--html]


def _train(tmp_path, overrides, name="run"):
    out = tmp_path / name
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["train", str(cfg), "--out", str(out), *sets]) == 0
    return out


def _check_html(page: str, pngs) -> None:
    """Self-contained: every image an inline PNG, no external URL or file reference."""
    imgs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(imgs) >= len(pngs) and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<link" not in page and "<script" not in page and "<table>" in page


def test_report_command_rebuilds_the_pictures_and_the_html(tmp_path, capsys,
                                                           tiny_cfg_overrides):
    out = _train(tmp_path, tiny_cfg_overrides)
    for f in (*LATENT_PNGS, "report.html", "eval.json"):
        (out / f).unlink(missing_ok=True)
    (out / "eval.json").write_text(json.dumps({"log_likelihood": -12.5, "ess": {"median": 3.0}}))
    capsys.readouterr()
    assert main(["report", str(out), "--html"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    for f in LATENT_PNGS:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    md = (out / "report.md").read_text()
    for f in LATENT_PNGS:
        assert f"]({f})" in md
    # the existing evaluation results are tabled, not recomputed
    assert "| log_likelihood | -12.5000 |" in md and "| ess.median | 3.0000 |" in md
    assert "synthetic` carries no labels" in md and "active units" in md
    page = (out / "report.html").read_text()
    _check_html(page, ["curves", "reconstructions", "samples", *LATENT_PNGS])
    assert "-12.5000" in page and "latent_usage" not in page


def test_report_of_a_categorical_latent_has_the_usage_heat_map(tmp_path, tiny_cfg_overrides):
    out = _train(tmp_path, [*tiny_cfg_overrides, "model.prior=categorical",
                            'model.latent={name = "categorical", num_variables = 3, '
                            "num_classes = 4}"])
    assert main(["report", str(out), "--html"]) == 0
    md = (out / "report.md").read_text()
    assert "](latent_usage.png)" in md and "variables active" in md
    assert "posterior class probabilities" in md
    assert (out / "latent_usage.png").is_file()
    _check_html((out / "report.html").read_text(), [*LATENT_PNGS, "latent_usage.png"])


def test_report_of_table_data_with_labels(tmp_path, tiny_cfg_overrides):
    pytest.importorskip("sklearn")
    out = _train(tmp_path, [*tiny_cfg_overrides, "data.name=breast_cancer",
                            "data.standardize=true", "model.likelihood=normal"])
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "coloured by the 2 class labels" in md and "Table data: one panel per unit" in md
    assert not (out / "report.html").exists()


def test_report_on_a_folder_that_is_not_a_run_is_one_line(tmp_path, error_line):
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["report", str(tmp_path)]) == 2
    assert "no checkpoint 'best'" in error_line()
    assert main(["report", str(tmp_path / "missing"), "--html"]) == 2
    assert "is not a run folder" in error_line()
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------------------------
# the HTML page in a real browser

CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(b)), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get "
                    "install chromium)")
def test_report_html_renders_in_headless_chromium(tmp_path, tiny_cfg_overrides):
    """Screenshot report.html with headless Chromium; the PNG must show the page's pictures:
    not blank (pixel values vary), and saturated pixels (matplotlib's blue and orange lines;
    the page's own text is black on white) that the same page with its <img> tags removed
    does not have, so the inlined images were decoded and drawn."""
    import matplotlib.image

    out = _train(tmp_path, tiny_cfg_overrides)
    assert main(["report", str(out), "--html"]) == 0
    page = (out / "report.html").read_text()
    (tmp_path / "text_only.html").write_text(re.sub(r"<img [^>]*>", "", page))

    def screenshot(html) -> torch.Tensor:
        shot = html.with_suffix(".png")
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
             "--window-size=1200,3000", html.as_uri()],
            check=True, timeout=120, capture_output=True,
        )
        return torch.from_numpy(matplotlib.image.imread(shot)[..., :3].copy())  # (H, W, 3)

    pixels, text_only = screenshot(out / "report.html"), screenshot(tmp_path / "text_only.html")
    assert pixels.shape[:2] == (3000, 1200)
    assert float(pixels.std()) > 0.05  # not blank
    saturated = [float(((p.amax(-1) - p.amin(-1)) > 0.2).double().mean())
                 for p in (pixels, text_only)]
    # measured: 1.2e-3 of the report's pixels, none of the text-only page's
    assert saturated[0] > 2e-4 and saturated[1] < 1e-5, saturated


# --------------------------------------------------------------------------------------------
# issue 28: a damaged eval.json is named (item 8); a wide latent is bounded by the units drawn
# and a stop request ends the report (item 13)


def test_a_truncated_eval_json_is_named_with_its_line_and_column(tmp_path):
    from vaelab.runs.run import read_eval

    assert read_eval(tmp_path) is None
    whole = json.dumps({"log_likelihood": -12.5, "ess": {"median": 3.0}}, indent=2)
    (tmp_path / "eval.json").write_text(whole[:20])  # what a full disk left of it
    with pytest.raises(ValueError, match=r"eval\.json is not valid JSON \(line 2, column \d+\)"):
        read_eval(tmp_path)
    (tmp_path / "eval.json").write_text("")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'eval.json'} is not valid JSON "
                                                   "(line 1, column 1): Expecting value")):
        read_eval(tmp_path)
    (tmp_path / "eval.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        read_eval(tmp_path)
    (tmp_path / "eval.json").write_text(whole)
    assert read_eval(tmp_path) == json.loads(whole)


def test_report_with_a_truncated_eval_json_is_one_line_naming_it(tmp_path, error_line,
                                                                 tiny_cfg_overrides):
    """Needs ``vaelab report`` (vaelab/cli.py) to read eval.json with
    :func:`vaelab.runs.run.read_eval`."""
    out = _train(tmp_path, tiny_cfg_overrides)
    (out / "eval.json").write_text('{"log_likeli')
    before = (out / "report.md").read_bytes()
    assert main(["report", str(out)]) == 2
    line = error_line()
    assert f"{out / 'eval.json'} is not valid JSON (line 1, column 2)" in line, line
    assert (out / "report.md").read_bytes() == before


def test_latent_stats_keeping_the_most_active_units_equals_the_whole(tmp_path):
    """PPCA (d = 2), 500 points: keeping the most active unit only, its means are the whole
    computation's column and the activity accumulated in batches of 7 equals the one-pass
    sample variance to 1e-12 relative (float64; Chan's pairwise update is exact up to
    rounding)."""
    vae, W, b, x = _ppca_points()
    whole = latent_stats(vae, x)
    kept = latent_stats(vae, x, batch_size=7, keep=1)
    top = int(whole.activity.argmax())
    assert kept.units.tolist() == [top] and kept.means.shape == (500, 1)
    torch.testing.assert_close(kept.means[:, 0], whole.means[:, top])
    torch.testing.assert_close(kept.activity, whole.activity, rtol=1e-12, atol=0)
    torch.testing.assert_close(kept.kl, whole.kl, rtol=1e-12, atol=0)
    assert latent_stats(vae, x, keep=2).units is None  # no more units than kept: all of them


@pytest.mark.slow
def test_the_report_of_a_wide_latent_is_bounded_by_the_units_it_draws(tmp_path,
                                                                       tiny_cfg_overrides):
    """``model.latent_dim = 20000`` after one epoch: ``vaelab report`` took 78 to 153 s and
    2.3 GB of peak RSS before the pictures were bounded by the units they draw (measured on 2
    loaded cores); now about 10 s and 0.4 GB. Bounds: 20 s for the report itself (imports excluded)
    and 1 GB of peak RSS of the whole process."""
    import os
    import sys

    from vaelab.resolve import load_config
    from vaelab.runs.train import train

    out = tmp_path / "wide"
    train(load_config(None, [*tiny_cfg_overrides, "model.latent_dim=20000", "train.epochs=1"]),
          out)
    # the peak RSS is VmHWM, the high-water mark of this process's own memory: ru_maxrss would
    # also count the parent's resident set at the fork (Linux keeps the larger of the two
    # across exec), i.e. pytest's, gigabytes late in the suite
    code = ("import re, sys, time\nfrom vaelab.cli import main\nt = time.perf_counter()\n"
            "rc = main(['report', sys.argv[1], '--html'])\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(rc, time.perf_counter() - t, hwm)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    rc, seconds, max_rss_kb = r.stdout.split()[-3:]
    assert rc == "0" and float(seconds) < 20, r.stdout
    assert int(max_rss_kb) < 1024**2, r.stdout  # kB
    md = (out / "report.md").read_text()
    assert "the 64 most active of 20000 dimensions" in md
    assert "the 64 of 20000 dimensions with the largest mean KL" in md


def test_a_stop_request_ends_the_report_in_one_line(tmp_path, capsys, monkeypatch,
                                                    tiny_cfg_overrides):
    """A real SIGTERM to this process while the report draws its first picture: the report
    stops before the next one, ``vaelab report`` exits 143 with one line, and report.md is
    left as it was."""
    import os
    import signal

    import vaelab.runs.report as report

    out = _train(tmp_path, tiny_cfg_overrides)
    before = (out / "report.md").read_bytes()
    handler = signal.getsignal(signal.SIGTERM)
    drawn = report.plot_curves

    def curves_then_sigterm(history, path):
        os.kill(os.getpid(), signal.SIGTERM)  # recorded by the report's handler
        return drawn(history, path)

    monkeypatch.setattr(report, "plot_curves", curves_then_sigterm)
    capsys.readouterr()
    assert main(["report", str(out), "--html"]) == 143
    err = capsys.readouterr().err
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "interrupted by SIGTERM while writing the report" in lines[0], lines[0]
    assert (out / "report.md").read_bytes() == before and not (out / "report.html").exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # the report's handler is removed


# --------------------------------------------------------------------------------------------
# several stochastic layers (model.layers): report, sample and evaluate of a tiny 2-layer run


@pytest.fixture(scope="module")
def two_layer_run(tmp_path_factory):
    """A 2-layer VAE (z_1 of 4, z_2 of 3) trained 2 epochs on the seeded synthetic data."""
    tiny = ["data.name=synthetic", "model.latent_dim=4", "model.hidden_sizes=[16]",
            "train.epochs=2", "train.batch_size=32", "train.progress=false",
            "eval.num_samples=50", "eval.limit=40",
            'model.layers=[{latent_dim = 3, network = {name = "mlp", hidden_sizes = [8]}}]']
    pyro.set_rng_seed(0)
    return _train(tmp_path_factory.mktemp("hier"), tiny, "h2")


def test_report_of_two_layers_has_a_row_and_a_kl_figure_per_layer(two_layer_run, capsys):
    out = two_layer_run
    for f in (*LATENT_PNGS, "latent_kl_z_1.png", "latent_kl_z_2.png", "report.md"):
        (out / f).unlink(missing_ok=True)
    assert main(["report", str(out), "--html"]) == 0
    md = (out / "report.md").read_text()
    for site, d in (("z_1", 4), ("z_2", 3)):
        assert re.search(rf"\| {site}: active units \| \d of {d} \|", md), md
        assert f"| {site}: KL summed over dimensions (nats) |" in md
        assert f"](latent_kl_{site}.png)" in md
        assert (out / f"latent_kl_{site}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the top layer is embedded and traversed; no one-layer KL figure
    assert "](latent_traversals.png)" in md and "](latent_embedding.png)" in md
    assert "](latent_kl.png)" not in md
    # z_2's KL is in closed form given nothing (its prior), z_1's sampled (bottom-up guide)
    assert "z_2 given its parent layer (closed form" in md
    assert "z_1 given its parent layer (Monte" in md
    _check_html((out / "report.html").read_text(),
                ["curves", "reconstructions", "samples", "latent_embedding.png",
                 "latent_traversals.png", "latent_kl_z_1.png", "latent_kl_z_2.png"])


def test_sample_of_two_layers_draws_top_down_through_every_layer(two_layer_run, tmp_path):
    # `vaelab sample` = the likelihood mean of the decoder at z_1 ~ p(z_1 | z_2), z_2 ~ p(z_2),
    # drawn by hand with the same seed: equal to the last bit
    from vaelab.runs.run import load_run

    npy = tmp_path / "s.npy"
    assert main(["sample", str(two_layer_run), "-n", "5", "--out", str(npy), "--seed", "3"]) == 0
    got = torch.from_numpy(__import__("numpy").load(npy))
    g = load_run(two_layer_run).vae.generative
    torch.manual_seed(3)
    with torch.no_grad():
        z2 = g.prior().sample((5,))  # (5, 3)
        z1 = g.conditionals[0](z2).sample()  # (5, 4)
        want = g.likelihood.mean(g.decoder(z1))
    assert torch.equal(got, want.double())


def test_evaluate_of_two_layers_with_eval_fused_gives_the_traced_numbers(two_layer_run, capsys):
    # the fused path of several Gaussian layers (vaelab.inference.fused_hierarchy): no note,
    # and the numbers of eval.fused = false (same seed, same draws: float32 rounding, 1e-6)
    results = {}
    for fused in ("true", "false"):
        capsys.readouterr()
        assert main(["evaluate", str(two_layer_run), "--json", "--no-progress",
                     "--set", f"eval.fused={fused}"]) == 0
        outerr = capsys.readouterr()
        results[fused] = json.loads(outerr.out)
        assert "does not apply" not in outerr.err, outerr.err
    for key in ("log_likelihood", "elbo", "ess_mean"):
        assert results["true"][key] == pytest.approx(results["false"][key], rel=1e-6), key


def test_evaluate_notes_a_two_layer_model_the_fused_path_refuses(capsys):
    # a likelihood without a fused path (beta): no fused function, one note
    from types import SimpleNamespace

    from vaelab.resolve import resolve
    from vaelab.runs.run import _fused_path
    from vaelab.vae import build_vae

    cfg = resolve({"model": {"latent_dim": 3, "hidden_sizes": [7], "likelihood": "beta",
                             "layers": [{"latent_dim": 2}]}, "guide": {"hidden_sizes": [7]}})
    run = SimpleNamespace(vae=build_vae(cfg, 6))
    capsys.readouterr()
    assert cfg.eval.fused and _fused_path(run, cfg.eval) == {}
    notes = [s for s in capsys.readouterr().err.splitlines() if "eval.fused does not" in s]
    assert len(notes) == 1 and "several latent sites" in notes[0]
    assert _fused_path(run, cfg.eval.model_copy(update={"fused": False})) == {}
    assert "eval.fused" not in capsys.readouterr().err
