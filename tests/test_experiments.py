"""Every experiment script runs end to end with a tiny budget (``--smoke``).

Scripts are discovered, not listed: a new ``experiments/*.py`` is smoke-run automatically, and
one that lacks ``main(argv)`` fails here.
"""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real training and timing loops, seconds each

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"experiments_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_experiment_smoke(script, tmp_path):
    module = _load(script)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main(argv)"
    rc = module.main(["--smoke", "--out", str(tmp_path)])
    assert rc in (0, None)
    tables = list(tmp_path.rglob("*.md"))
    assert tables, f"{script.name} --smoke wrote no Markdown table into --out"
    assert all(t.read_text().strip() for t in tables)


def test_score_function_signal_parts_match_the_closed_form_kl_in_expectation():
    """``score_function_variance.signal_parts`` against ground truth on an untrained 3 × 4
    categorical VAE whose encoder weights are scaled ×4 (KL 1.2–2.5 nats per image, so a sign
    or a missing term shows): over 2000 draws per image, the mean of log p(z) − log q(z|x) is
    −KL(q‖p) in closed form (each of 8 images within 5 standard errors, estimated from the
    draws); the sum is the two parts' sum; the correlation helper equals torch.corrcoef per
    image."""
    import pyro.poutine as poutine
    import torch

    from vaelab.model.distributions import kl_categorical, logits_of
    from vaelab.resolve import load_config
    from vaelab.vae import build_vae

    module = _load(EXPERIMENTS / "score_function_variance.py")
    torch.manual_seed(0)
    vae = build_vae(load_config(None, module.SMOKE), 10)
    with torch.no_grad():
        for p in vae.inference.parameters():
            p.mul_(4)  # sharpen q(z|x) away from the uniform prior
    x = torch.bernoulli(torch.full((8, 10), 0.5))
    parts = module.signal_parts(vae, x, draws=2000)
    rec, kl_part, total = parts.values()  # each (2000, 8)
    with torch.no_grad():
        guide = poutine.trace(vae.guide).get_trace(x)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
        kl = kl_categorical(logits_of(guide.nodes["z"]["fn"]),
                            logits_of(model.nodes["z"]["fn"])).sum(-1)  # (8,)
    se = kl_part.std(0) / 2000 ** 0.5
    assert ((kl_part.mean(0) + kl).abs() < 5 * se).all()
    assert kl.min() > 1.0  # far from the prior: the check has teeth (se ≈ 0.03)
    assert torch.allclose(total, rec + kl_part)
    want = [torch.corrcoef(torch.stack([rec[:, b], kl_part[:, b]]))[0, 1] for b in range(8)]
    assert module._correlation(rec, kl_part) == pytest.approx(float(torch.stack(want).mean()),
                                                              abs=1e-5)


# --------------------------------------------------------------------------------------------
# compare_latents: seeds, resumable IS, exported files and the results block rebuilt from them

#: IS points of a smoke run (``SMOKE_EVAL``) and the block size the tests score them in
LATENTS_POINTS, LATENTS_BLOCK = 20, 7


@pytest.fixture(scope="module")
def latents_smoke(tmp_path_factory):
    """``compare_latents.py --smoke`` with 2 seeds of 3 models, IS on 20 test images in blocks
    of 7 (3 blocks), run folders kept: (the module, --out, the arguments)."""
    out = tmp_path_factory.mktemp("latents")
    module = _load(EXPERIMENTS / "compare_latents.py")
    argv = ["--smoke", "--out", str(out), "--runs", str(out / "runs"), "--seeds", "2",
            "--variants", "gaussian", "enum", "gumbel_categorical",
            "--set", f"eval.block_size={LATENTS_BLOCK}"]
    assert module.main(argv) == 0
    return module, out, argv


def _tsv(path) -> list[tuple[float, float]]:
    """(log_px, elbo) per point of an exported ``is_points.tsv``, as its text reads."""
    rows = [ln.split("\t") for ln in path.read_text().splitlines()[2:] if ln]
    return [(float(r[1]), float(r[2])) for r in rows]


def test_latents_block_is_rebuilt_from_the_exported_files_alone(latents_smoke, tmp_path):
    """The block the 2-seed run wrote into its page is the block ``--table-from`` rebuilds from
    the exported files, with the run folders out of reach; the rest of the page is kept."""
    module, out, _ = latents_smoke
    page = out / "latents.md"
    written = page.read_text()
    block = module.block_of(page)
    assert "seeds 0, 1 (`train.seed`)" in block and "n = 2 seeds" in block
    for name in ("gaussian", "enum", "gumbel_categorical"):
        for seed in (0, 1):
            folder = out / "latents" / name / f"seed{seed}"
            assert sorted(p.name for p in folder.iterdir()) == [
                "config.toml", "is_points.tsv", "metrics.jsonl", "result.json"]
    (out / "runs").rename(tmp_path / "runs")  # no run folder, no checkpoint
    try:
        page.write_text(written.replace(block, f"{module.BEGIN}\n{module.END}"))
        assert module.main(["--out", str(out), "--table-from", str(out / "latents")]) == 0
    finally:
        (tmp_path / "runs").rename(out / "runs")
    assert page.read_text() == written


def test_latents_paired_cell_is_the_mean_of_per_seed_image_differences(latents_smoke):
    """The block's cells against the exported TSVs, by hand: −log p̂(x) is the mean ± sd over
    the 2 seeds of each seed's mean over the 20 images; the paired cell is, per seed, the mean
    over the same images of log p̂_model − log p̂_gaussian, then mean ± t(1)·sd/√2 with
    t_{0.975, 1} = 12.706."""
    import math
    import statistics

    module, out, _ = latents_smoke
    block = module.block_of(out / "latents.md")

    def points(name: str, seed: int) -> list[tuple[float, float]]:
        return _tsv(out / "latents" / name / f"seed{seed}" / "is_points.tsv")

    per_seed, nll = [], []
    for seed in (0, 1):
        a, g = points("gumbel_categorical", seed), points("gaussian", seed)
        assert len(a) == len(g) == LATENTS_POINTS
        per_seed.append(sum(x[0] - y[0] for x, y in zip(a, g)) / len(a))
        nll.append(-sum(x[0] for x in a) / len(a))
    m, sd = statistics.mean(per_seed), statistics.stdev(per_seed)
    paired = f"{m:+.2f} ± {12.706 * sd / math.sqrt(2):.2f} (95 % t-interval, n = 2 seeds)"
    row = next(ln for ln in block.splitlines() if ln.startswith("| Gumbel-softmax, categorical"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == f"{statistics.mean(nll):.2f} ± {statistics.stdev(nll):.2f} (2 seeds)"
    assert cells[-2] == paired


def test_latents_is_pass_killed_and_resumed_gives_the_same_points(latents_smoke, tmp_path,
                                                                  monkeypatch):
    """A resumable IS pass: two of the three saved blocks of one run deleted, then a pass that
    fails while scoring the last one (block 1 is saved, block 2 is not), then ``--reuse``
    again: the exported per-point log p̂(x) and ELBO are those of the uninterrupted pass."""
    import vaelab.runs.run as run_module

    module, out, argv = latents_smoke
    blocks = out / "runs" / "seed1" / "gumbel_categorical" / module.IS_FOLDER
    assert sorted(p.name for p in blocks.glob("block_*.pt")) == [
        "block_0000.pt", "block_0001.pt", "block_0002.pt"]
    name = Path("gumbel_categorical") / "seed1" / "is_points.tsv"
    want = (out / "latents" / name).read_text()
    for b in (1, 2):
        (blocks / f"block_000{b}.pt").unlink()
    evaluate, scored = run_module.evaluate, []

    def killed_at_block_2(run, ec=None, *, points=None, **kw):
        if points is not None:
            scored.append(points.start)
            if points.start == 2 * LATENTS_BLOCK:
                raise RuntimeError("killed while scoring block 2")
        return evaluate(run, ec, points=points, **kw)

    again = [*argv, "--reuse", "--out", str(tmp_path), "--export", str(tmp_path / "latents")]
    monkeypatch.setattr(run_module, "evaluate", killed_at_block_2)
    with pytest.raises(RuntimeError, match="block 2"):
        module.main(again)
    assert scored == [LATENTS_BLOCK, 2 * LATENTS_BLOCK]  # every other block was read back
    assert (blocks / "block_0001.pt").is_file() and not (blocks / "block_0002.pt").exists()
    monkeypatch.setattr(run_module, "evaluate", evaluate)
    assert module.main(again) == 0
    assert (tmp_path / "latents" / name).read_text() == want
    assert _tsv(tmp_path / "latents" / name) == _tsv(out / "latents" / name)


def test_the_committed_latents_block_is_the_regenerated_one():
    """``experiments/results/latents.md``'s results block is the one ``--table-from
    experiments/results/latents`` builds from the committed per-run files (none yet: the block
    says so, and holds no number)."""
    module = _load(EXPERIMENTS / "compare_latents.py")
    export = EXPERIMENTS / "results" / "latents"
    block = module.block_of(EXPERIMENTS / "results" / "latents.md")
    assert block == module.results_block(module.read_exported(export), "jang",
                                         module._relative(export))
    if not export.exists():
        assert "no 3-seed run yet" in block


def test_paulus_gradients_bias_beyond_noise_recovers_a_known_bias():
    """``paulus_gradients``' split of ‖mean − reference‖ into noise and bias, on synthetic
    draws g ~ N(μ + b, σ² I) of P = 20,000 coordinates, M = 100 draws, a reference μ with its
    own standard error: with b = 0 the bias is below 0.2 noise (‖Δ‖² − noise² has sd √(2/P)
    noise², 0.01 noise², so 0.2 noise is 4 sd of it), and with ‖b‖ = 3 noise it is ‖b‖ within
    5 %; the noise equals √(P σ²/M + se²) computed from the draws' variance."""
    from types import SimpleNamespace

    import torch

    module = _load(EXPERIMENTS / "paulus_gradients.py")
    g = torch.Generator().manual_seed(0)
    P, M, sigma = 20_000, 100, 0.5
    mu = torch.randn(P, generator=g, dtype=torch.float64)
    ref_noise = 0.3 * torch.randn(P, generator=g, dtype=torch.float64) / P ** 0.5
    ref, ref_se = mu + ref_noise, 0.3
    floor = (P * sigma ** 2 / M + ref_se ** 2) ** 0.5
    for b_norm in (0.0, 3.0 * floor):
        b = torch.randn(P, generator=g, dtype=torch.float64)
        b *= b_norm / float(b.norm())
        draws = mu + b + sigma * torch.randn(M, P, generator=g, dtype=torch.float64)
        stats = SimpleNamespace(variance=float(draws.var(0).mean()), num_params=P)
        noise = module.noise_norm(stats, M, ref_se)
        assert noise == pytest.approx(floor, rel=0.01)
        got = module.excess_bias(float((draws.mean(0) - ref).norm()), noise)
        if b_norm == 0.0:
            assert got < 0.2 * noise
        else:
            assert got == pytest.approx(b_norm, rel=0.05)
