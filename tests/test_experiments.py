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
