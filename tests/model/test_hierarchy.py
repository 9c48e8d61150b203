"""The L-layer model (vaelab.model.hierarchy) and its guides (vaelab.guide.hierarchical):
the one-layer path unchanged (the Step 0 fixture, made by the code before the hierarchy), the
sites, the exact posterior of a linear-Gaussian hierarchy, and the config's refusals."""

import importlib.util
from pathlib import Path

import pyro.poutine as poutine
import pytest
import torch

from hier_ground_truth import D, make_hier
from vaelab.registry import ConfigError
from vaelab.resolve import load_config
from vaelab.vae import HierarchicalVAE, build_vae

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "hier_L1"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("hier_L1_make", FIXTURE / "make.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_layer_path_reproduces_the_fixture_exactly():
    """The fixture was trained and scored by the code before model.layers existed
    (tests/fixtures/hier_L1/make.py), with the same draws. On the machine that made it the
    equality is bitwise. Another CPU's float32 kernels round differently: on an AMD EPYC (AVX2)
    the parameters after 8 steps differed by at most 3.0e-8 and log p̂ by 2.6e-7, so the check is
    to 1e-6 (parameters) and 1e-5 nats (log p̂), about 30 times those. Any change to what the
    model computes (an initialisation order, a term of the loss) moves them by 1e-3 or more."""
    make = _fixture_module()
    x = make.data()
    vae = make.build()
    assert not isinstance(vae, HierarchicalVAE)
    make.train(vae, x)
    want = torch.load(FIXTURE / "state.pt")
    got = vae.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0.0, atol=1e-6, msg=k)
    torch.testing.assert_close(make.log_px(vae, x), torch.load(FIXTURE / "log_px.pt"),
                               rtol=0.0, atol=1e-5)


def test_explicit_empty_layers_is_the_one_layer_model():
    make = _fixture_module()
    a, b = make.build(), make.build(["model.layers=[]"])
    assert not isinstance(b, HierarchicalVAE)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("hierarchy", ["bottom_up", "top_down", "ladder"])
def test_sites_and_order(hierarchy):
    vae, _ = make_hier(hierarchy)
    x = torch.randn(3, D, dtype=torch.float64)
    mtr = poutine.trace(vae.model).get_trace(x)
    gtr = poutine.trace(vae.guide).get_trace(x)
    latent = [n for n, s in mtr.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and n != "data"]
    assert latent == ["z_2", "z_1"]  # the model draws top-down
    glatent = [n for n, s in gtr.nodes.items() if s["type"] == "sample" and n != "data"]
    assert glatent == (["z_1", "z_2"] if hierarchy == "bottom_up" else ["z_2", "z_1"])
    for tr in (mtr, gtr):
        for name in ("z_1", "z_2"):
            assert tr.nodes[name]["value"].shape == (3, 2)
            assert any(f.name == "data" for f in tr.nodes[name]["cond_indep_stack"])


@pytest.mark.parametrize("hierarchy", ["bottom_up", "top_down", "ladder"])
def test_exact_guide_gives_constant_log_weights_equal_to_log_px(hierarchy):
    # q = p(z_1, z_2 | x) exactly: log p(x, z) − log q(z | x) = log p(x) at every draw;
    # 200 draws × 5 points, float64: equality to 1e-9
    vae, truth = make_hier(hierarchy)
    x = truth.sample_x(5)
    from vaelab.inference.importance import log_weights

    with torch.no_grad():
        lw = log_weights(vae.model, vae.guide, 200, x).local  # (200, 5)
    want = truth.log_px(x)
    assert torch.allclose(lw, want.expand_as(lw), atol=1e-9, rtol=0)


def test_skip_decoder_reads_every_layer():
    cfg = load_config(None, ["model.latent_dim=3", "model.hidden_sizes=[4]", "model.skip=true",
                             "model.layers=[{latent_dim = 2}]", "guide.hierarchy=top_down"])
    vae = build_vae(cfg, 10)
    assert vae.generative.decoder.linear_layers[0].in_features == 5
    assert vae.inference.layers[0].network.linear_layers[0].in_features == 10 + 2


@pytest.mark.parametrize("overrides, match", [
    (["model.skip=true", "model.layers=[]"], "declare them in model.layers"),
    (["model.prior=vamp"], "guide.hierarchy = 'top_down'"),
    (["guide.family=student_t"], "guide.family = 'student_t'"),
    # families and latents that assume the one site "z": a flow, relaxed or categorical guide
    (["guide.family=iaf"], "guide.family = 'iaf' is not"),
    (["guide.family=relaxed"], "guide.family"),
    (["guide.family=categorical"], "guide.family"),
    (["model.latent=categorical", "model.prior=categorical", "guide.family=relaxed"],
     "model.latent = 'categorical' is not"),
    (["model.latent=categorical", "model.prior=categorical", "guide.family=categorical"],
     "model.latent = 'categorical' is not"),
    (["model.layers=[{latent_dim = 0}]"], "latent_dim"),
    (["model.layers=[{latent_dim = 2, network = \"nonesuch\"}]"], "nonesuch"),
])
def test_refusals_are_one_line_config_errors(overrides, match):
    base = ["model.latent_dim=3", "model.hidden_sizes=[4]", "model.layers=[{latent_dim = 2}]"]
    with pytest.raises(ConfigError, match=match) as err:
        build_vae(load_config(None, base + overrides), 10)
    assert "\n" not in str(err.value)


def test_vampprior_on_top_layer_mixes_the_guides_q_zL_given_x():
    cfg = load_config(None, ["model.latent_dim=3", "model.hidden_sizes=[4]",
                             "model.layers=[{latent_dim = 2}]", "guide.hierarchy=top_down",
                             "model.prior={name = \"vamp\", components = 5}"])
    vae = build_vae(cfg, 10)
    prior = vae.generative.prior
    assert prior._encoder is vae.inference.layers[-1].network
    u = torch.nn.functional.hardtanh(prior.pseudo_inputs, 0.0, 1.0)
    z = torch.randn(7, 2)
    q = vae.inference.layers[-1](u)  # q(z_2 | u_k), batch (5,)
    want = torch.logsumexp(q.log_prob(z.unsqueeze(1)), 1) - torch.log(torch.tensor(5.0))
    assert torch.allclose(prior().log_prob(z), want, atol=1e-5)


def test_ancestral_samples_have_the_closed_form_moments():
    # x = W(A z_2 + a + s ε_1) + b: its mean is W a + b; n = 20000 draws of E[x | z], whose
    # covariance is W Cov(z_1) Wᵀ (entries ≤ 1.5²·2.1 ≈ 4.7): 5 se ≈ 5·2.2/√20000 < 0.08
    vae, truth = make_hier("bottom_up")
    torch.manual_seed(0)
    m = vae.generative.sample(20000).mean(0)
    assert torch.allclose(m, truth.W @ truth.a + truth.b, atol=0.08)


@pytest.mark.parametrize("hierarchy", ["bottom_up", "top_down", "ladder"])
def test_parameter_groups_split_encoder_and_decoder_per_layer_and_partition_the_parameters(
        hierarchy):
    vae, _ = make_hier(hierarchy)
    groups = vae.parameter_groups()
    assert list(groups) == ["encoder z_1", "encoder z_2", "decoder", "decoder z_1", "prior"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in vae.parameters()}
    assert {id(p) for p in groups["encoder z_2"]} == {
        id(p) for p in vae.inference.layers[1].parameters()}
    assert {id(p) for p in groups["decoder z_1"]} == {
        id(p) for p in vae.generative.conditionals[0].parameters()}


def test_ladder_elbo_is_below_log_px_away_from_the_exact_posterior():
    # the ladder guide perturbed (bottom-up means +0.3, scales ×1.3): E_q[log w] = ELBO <
    # log p(x) per point; n = 4000 draws per point, the gap must exceed 5 standard errors
    vae, truth = make_hier("ladder", loc_shift=0.3, scale_factor=1.3)
    x = truth.sample_x(5)
    from vaelab.inference.importance import log_weights

    with torch.no_grad():
        lw = log_weights(vae.model, vae.guide, 4000, x).local  # (4000, 5)
    gap = truth.log_px(x) - lw.mean(0)
    se = lw.std(0) / 4000**0.5
    assert (gap > 5 * se).all(), (gap, se)


def test_ladder_shares_the_models_conditionals_and_has_no_vampprior():
    vae, _ = make_hier("ladder")
    assert vae.inference.merges[0]._prior is vae.generative.conditionals[0]
    assert not any(p is q for p in vae.inference.parameters()
                   for q in vae.generative.conditionals.parameters())
    cfg = load_config(None, ["model.latent_dim=3", "model.hidden_sizes=[4]",
                             "model.layers=[{latent_dim = 2}]", "guide.hierarchy=ladder",
                             "model.prior={name = \"vamp\", components = 5}"])
    with pytest.raises(ConfigError, match="guide.hierarchy = 'ladder' has no one network"):
        build_vae(cfg, 10)
