"""Model and guide traces: site names, plates, batch and event shapes."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample

from vaelab.resolve import load_config
from vaelab.vae import build_vae


@pytest.fixture
def vae():
    cfg = load_config(None, ["model.latent_dim=3", "model.hidden_sizes=[8, 8]"])
    return build_vae(cfg, 10)


def test_model_and_guide_sites_match(vae):
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    gtr = poutine.trace(vae.guide).get_trace(x)
    mtr = poutine.trace(poutine.replay(vae.model, trace=gtr)).get_trace(x)
    gtr.compute_log_prob()
    mtr.compute_log_prob()
    g_sites = [
        n for n, s in gtr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)
    ]
    m_sites = {
        n: s for n, s in mtr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)
    }
    assert g_sites == ["z"] and set(m_sites) == {"z", "x"}
    assert m_sites["x"]["is_observed"] and not m_sites["z"]["is_observed"]
    z = gtr.nodes["z"]
    assert z["fn"].batch_shape == (4,) and z["fn"].event_shape == (3,)
    assert z["value"].shape == (4, 3) and z["log_prob"].shape == (4,)
    xs = m_sites["x"]
    assert xs["fn"].batch_shape == (4,) and xs["fn"].event_shape == (10,)
    assert [f.name for f in xs["cond_indep_stack"]] == ["data"]
    assert torch.equal(mtr.nodes["z"]["value"], z["value"])
    params = {n for n, s in gtr.nodes.items() if s["type"] == "param"}
    assert any(p.startswith("encoder$$$") for p in params)
    params = {n for n, s in mtr.nodes.items() if s["type"] == "param"}
    assert any(p.startswith("decoder$$$") for p in params)


def test_particle_plate_broadcasts_to_K_by_B(vae):
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    with pyro.plate("particles", 7, dim=-2):
        gtr = poutine.trace(vae.guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(vae.model, trace=gtr)).get_trace(x)
    assert gtr.nodes["z"]["value"].shape == (7, 4, 3)
    assert mtr.nodes["x"]["fn"].batch_shape == (7, 4)


def test_beta_scales_both_latent_sites(vae):
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    gtr = poutine.trace(vae.guide).get_trace(x, 0.25)
    mtr = poutine.trace(poutine.replay(vae.model, trace=gtr)).get_trace(x, 0.25)
    assert gtr.nodes["z"]["scale"] == 0.25 and mtr.nodes["z"]["scale"] == 0.25
    assert mtr.nodes["x"]["scale"] == 1.0


def test_linear_when_hidden_sizes_empty():
    cfg = load_config(None, ["model.hidden_sizes=[]", "model.latent_dim=2"])
    vae = build_vae(cfg, 5)
    assert len(vae.generative.decoder) == 1 and len(vae.inference.encoder) == 1
