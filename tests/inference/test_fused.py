"""The fused importance-sampling path equals the traced Pyro path on the same draws: per point,
to a relative 1e-6 in float32 and 1e-12 in float64, for each fused likelihood (Bernoulli through
the MLP's last layer, Bernoulli behind a gated decoder, normal, discretized logistic), for
Gaussian latents and for the discrete model of categorical latents (one-hot decoder input as a
gather of weight columns; relaxed or REINFORCE guide family, uniform or learned prior), and the
streamed k̂ and ESS agree too; other models fall back to the traced path. Float tolerances only:
the fused path sums the same terms in another order (no Monte Carlo error: the draws are the
same, a different draw would move a log weight by O(1) nats)."""

import pytest
import torch

from fused_pairs import estimates
from vaelab.inference.fused import fused_log_weights
from vaelab.inference.importance import log_weights
from vaelab.resolve import resolve
from vaelab.vae import build_vae

D = 12

CASES = {
    "bernoulli_mlp": {"model": {"likelihood": "bernoulli"}},
    "bernoulli_mlp_tanh": {"model": {"likelihood": "bernoulli", "activation": "tanh",
                                     "hidden_sizes": [7, 6]}},
    "bernoulli_mlp_gelu": {"model": {"likelihood": "bernoulli", "activation": "gelu",
                                     "hidden_sizes": [7, 6]}},
    "bernoulli_gated": {"model": {"likelihood": "bernoulli",
                                  "decoder": {"name": "gated", "hidden_sizes": [9]}}},
    "normal": {"model": {"likelihood": {"name": "normal", "scale": 0.3}}},
    "discretized_logistic": {"model": {"likelihood": {"name": "discretized_logistic",
                                                      "levels": 16}}},
    "vamp_prior": {"model": {"likelihood": "bernoulli",
                             "prior": {"name": "vamp", "components": 3}}},
}
CATEGORICAL = {"name": "categorical", "num_variables": 4, "num_classes": 3}
CASES.update({
    "categorical_relaxed": {"model": {"likelihood": "bernoulli", "latent": CATEGORICAL,
                                      "prior": "categorical", "activation": "tanh",
                                      "hidden_sizes": [7, 6]}},
    "categorical_reinforce_learned_prior": {
        "model": {"likelihood": "bernoulli", "latent": {**CATEGORICAL, "prior": "learned"},
                  "prior": "categorical"},
        "guide": {"family": {"name": "categorical", "baseline_hidden_sizes": [5]}}},
    "categorical_normal": {"model": {"likelihood": {"name": "normal", "scale": 0.3},
                                     "latent": CATEGORICAL, "prior": "categorical"}},
    "categorical_linear_decoder": {"model": {"likelihood": "bernoulli", "latent": CATEGORICAL,
                                             "prior": "categorical", "hidden_sizes": []}},
    "categorical_gated": {"model": {"likelihood": "bernoulli", "latent": CATEGORICAL,
                                    "prior": "categorical",
                                    "decoder": {"name": "gated", "hidden_sizes": [9]}}},
})


def _vae_and_data(case: str, dtype: torch.dtype):
    torch.manual_seed(0)
    model = {"latent_dim": 3, **CASES[case]["model"]}
    if "decoder" not in model:
        model.setdefault("hidden_sizes", [7])
    raw = {"model": model, "guide": {"hidden_sizes": [7], **CASES[case].get("guide", {})}}
    vae = build_vae(resolve(raw), D).to(dtype)
    vae.eval()
    with torch.no_grad():  # a learned prior away from uniform, so that log p(z) matters
        for p in vae.generative.prior.parameters():
            p.normal_(generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(1)
    if case == "discretized_logistic":
        x = torch.randint(0, 16, (5, D), generator=g).to(dtype) / 15
    elif case == "normal":
        x = torch.randn(5, D, generator=g, dtype=dtype)
    else:
        x = torch.rand(5, D, generator=g, dtype=dtype).round()
    return vae, x


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_log_weights_equal_the_traced_ones_on_the_same_draws(case, dtype, rtol):
    vae, x = _vae_and_data(case, dtype)
    fused = fused_log_weights(vae)
    assert fused is not None
    model, guide = vae.eval_pair()
    torch.manual_seed(7)
    with torch.no_grad():
        traced = log_weights(model, guide, 40, x)
    torch.manual_seed(7)
    ours = fused(x, 40)  # (40, 5)
    ref = traced.local + traced.global_.unsqueeze(-1)
    z = traced.guide_trace.nodes["z"]["value"]
    assert z.shape == (40, 5, *vae.latent.event_shape)
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=0.0)
    torch.manual_seed(7)
    torch.testing.assert_close(fused(x, 40), ours, rtol=0.0, atol=0.0)  # the cached encoder


@pytest.mark.parametrize("case", ["bernoulli_mlp", "normal", "discretized_logistic",
                                  "categorical_relaxed", "categorical_normal"])
def test_fused_estimate_equals_the_traced_estimate_per_point(case):
    vae, x = _vae_and_data(case, torch.float32)
    a, b = estimates(vae, x, num_samples=500, batch_size=2, chunk_size=64)
    torch.testing.assert_close(b.log_px, a.log_px, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(b.ess, a.ess, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(b.pareto_k, a.pareto_k, rtol=1e-3, atol=1e-4)


def test_no_fused_path_where_the_model_is_not_covered():
    base = {"latent_dim": 3, "hidden_sizes": [7]}
    for raw in ({"model": base, "guide": {"family": "student_t"}},
                {"model": {**base, "likelihood": "beta"}},
                {"model": {**base, "latent": "categorical", "prior": "categorical",
                           "likelihood": "beta"}}):
        assert fused_log_weights(build_vae(resolve(raw), D)) is None, raw


@pytest.mark.parametrize("case", ["bernoulli_mlp", "bernoulli_mlp_tanh", "bernoulli_mlp_gelu",
                                  "normal", "categorical_relaxed", "categorical_linear_decoder"])
def test_row_blocks_of_the_decoder_do_not_change_the_log_weights(case, monkeypatch):
    """40 particles × 5 points = 200 rows in blocks of 7 (the last one short) against one block:
    the same draws, the same values to float32 rounding (rtol 1e-6)."""
    import vaelab.inference.fused as fused_module

    vae, x = _vae_and_data(case, torch.float32)
    runs = []
    for block in (10_000, 7):
        monkeypatch.setattr(fused_module, "BLOCK_ROWS", block)
        torch.manual_seed(7)
        runs.append(fused_log_weights(vae)(x, 40))  # (40, 5)
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-6, atol=0.0)
    model, guide = vae.eval_pair()
    torch.manual_seed(7)
    with torch.no_grad():
        traced = log_weights(model, guide, 40, x)
    torch.testing.assert_close(runs[1], traced.local + traced.global_.unsqueeze(-1), rtol=1e-6,
                               atol=0.0)
