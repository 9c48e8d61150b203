"""Networks as components (issue 11, item 3): ``model.decoder`` / ``guide.encoder`` = ``mlp``,
``gated`` or ``conv``; one home for a network's widths (issue 23, item 4: ``model.hidden_sizes``
/ ``guide.hidden_sizes`` spell the networks' own); traces on image-shaped data; one training step
and one IS evaluation for every network × likelihood domain; bad configs."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from vaelab.cli import main
from vaelab.config import RunConfig
from vaelab.data import DataSplits
from vaelab.model.networks import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    GatedDense,
    GatedMLP,
    initialize,
    stage_sizes,
)
from vaelab.registry import ConfigError
from vaelab.resolve import dump_toml, load_config, resolve, to_dict
from vaelab.runs.report import image_grid
from vaelab.runs.run import bytes_per_particle, eval_config, evaluate
from vaelab.runs.train import train
from vaelab.vae import build_vae

SHAPE = (1, 8, 8)
D = 64
SMALL_CONV = '{name = "conv", channels = [4, 8]}'
SMALL_GATED = '{name = "gated", hidden_sizes = [16]}'
NETWORKS = {"mlp": "mlp", "gated": SMALL_GATED, "conv": SMALL_CONV}


def cfg_with(*overrides: str) -> RunConfig:
    """A small config; ``model.hidden_sizes`` (the MLP shortcut) only for an MLP decoder."""
    mlp = not any(o.startswith("model.decoder=") and "mlp" not in o for o in overrides)
    return load_config(None, ["data.name=synthetic", "model.latent_dim=3",
                              *(["model.hidden_sizes=[16]"] if mlp else []), *overrides])


# --------------------------------------------------------------------------------------------
# resolution: the shortcut keys, mirroring, saved configs


def test_no_decoder_key_means_the_mlp_of_the_shortcut_keys():
    cfg = load_config(None, ["model.hidden_sizes=[30, 20]", "model.activation=tanh"])
    assert cfg.model.decoder.model_dump() == {"name": "mlp", "init": "default",
                                              "hidden_sizes": [30, 20], "activation": "tanh"}
    # the encoder mirrors the decoder, as guide.hidden_sizes = None always meant
    assert cfg.guide.encoder.model_dump() == {"name": "mlp", "init": "default",
                                              "hidden_sizes": [20, 30], "activation": "tanh"}
    assert cfg.guide.hidden_sizes == [20, 30]
    cfg = load_config(None, ["model.hidden_sizes=[30, 20]", "guide.hidden_sizes=[5]"])
    assert cfg.guide.encoder.hidden_sizes == [5]


def test_an_old_saved_config_without_networks_builds_the_same_state_dict():
    """A version-2 config saved before networks were components (no decoder/encoder keys)
    builds the MLP it meant, with the state-dict keys of every run folder saved so far."""
    old = {"version": 2, "model": {"latent_dim": 2, "hidden_sizes": [7]}, "guide": {}}
    cfg = resolve(old, saved=True)
    vae = build_vae(cfg, 5)
    assert sorted(vae.state_dict()) == sorted([
        "generative.decoder.0.weight", "generative.decoder.0.bias",
        "generative.decoder.2.weight", "generative.decoder.2.bias",
        "inference.encoder.0.weight", "inference.encoder.0.bias",
        "inference.encoder.2.weight", "inference.encoder.2.bias",
    ])
    assert vae.generative.decoder[0].in_features == 2 and vae.inference.encoder[0].out_features == 7


@pytest.mark.parametrize("overrides", [
    ["model.decoder=conv"],
    ["model.decoder=gated", "guide.encoder=mlp"],
    ['model.decoder={name = "mlp", init = "he"}', "model.activation=elu"],
    ["model.decoder=conv", "guide.hidden_sizes=[5]"],
    ["guide.encoder.init=xavier", "model.decoder=gated"],
])
def test_resolution_is_idempotent_and_saved_configs_are_explicit(overrides, tmp_path):
    cfg = load_config(None, overrides)
    assert resolve(to_dict(cfg)) == cfg  # what eval_config and resume do
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path) == cfg
    assert "[model.decoder]" in dump_toml(cfg) and "[guide.encoder]" in dump_toml(cfg)


def test_the_encoder_mirrors_the_decoder_and_a_table_without_name_adds_to_it():
    cfg = load_config(None, ['model.decoder={name = "conv", channels = [8, 16], '
                             'hidden_sizes = [32, 64]}', "guide.encoder.init=he"])
    enc = cfg.guide.encoder
    assert enc.name == "conv" and enc.channels == [8, 16] and enc.hidden_sizes == [64, 32]
    assert enc.init == "he" and cfg.model.decoder.init == "default"
    # guide.hidden_sizes are the mirrored encoder's widths, whatever network the decoder is
    # (before version 3 they made an MLP beside a non-MLP decoder: test_resolve's upgrade test)
    cfg = load_config(None, ["model.decoder=gated", "guide.hidden_sizes=[9]"])
    assert cfg.guide.encoder.name == "gated" and cfg.guide.encoder.hidden_sizes == [9]


@pytest.mark.parametrize("overrides,decoder,encoder", [
    (["model.hidden_sizes=[50]", "model.decoder=conv"], ("conv", [50]), ("conv", [50])),
    (["model.hidden_sizes=[50]", "model.decoder=gated"], ("gated", [50]), ("gated", [50])),
    (["guide.hidden_sizes=[50]", "guide.encoder=conv"], ("mlp", [400]), ("conv", [50])),
    (["model.hidden_sizes=[50]", "guide.encoder=conv"], ("mlp", [50]), ("conv", [])),
])
def test_the_width_keys_spell_the_widths_of_whichever_network(overrides, decoder, encoder):
    """One home: ``model.hidden_sizes`` is ``model.decoder.hidden_sizes`` (likewise for the
    guide) for any network, echoed back after resolution; before version 3 the keys were an
    MLP's and these configs were refused."""
    cfg = load_config(None, overrides)
    dec, enc = cfg.model.decoder, cfg.guide.encoder
    assert (dec.name, dec.hidden_sizes) == decoder and (enc.name, enc.hidden_sizes) == encoder
    assert cfg.model.hidden_sizes == dec.hidden_sizes and cfg.guide.hidden_sizes == enc.hidden_sizes
    assert resolve(to_dict(cfg)) == cfg


def test_the_shipped_config_takes_conv_networks_by_name(capsys):
    """``vaelab config show experiments/configs/gaussian_mnist.toml --set model.decoder=conv
    --set guide.encoder=conv`` (refused before version 3: the file sets ``model.hidden_sizes``,
    then an MLP's widths): the file's widths are the conv decoder's dense widths, the named
    encoder takes its own defaults."""
    path = Path(__file__).parents[2] / "experiments" / "configs" / "gaussian_mnist.toml"
    assert main(["config", "show", str(path), "--set", "model.decoder=conv", "--set",
                 "guide.encoder=conv"]) == 0
    shown = capsys.readouterr().out
    cfg = resolve(tomllib.loads(shown))
    assert cfg == load_config(path, ["model.decoder=conv", "guide.encoder=conv"])
    assert cfg.model.decoder.model_dump() == {"name": "conv", "init": "default",
                                              "channels": [32, 64], "hidden_sizes": [300, 300],
                                              "activation": "relu"}
    assert cfg.guide.encoder.model_dump() == {"name": "conv", "init": "default",
                                              "channels": [32, 64], "hidden_sizes": [],
                                              "activation": "relu"}


@pytest.mark.parametrize("overrides,keys", [
    (["model.hidden_sizes=[50]", 'model.decoder={name = "mlp", hidden_sizes = [10]}'],
     ["model.hidden_sizes", "model.decoder.hidden_sizes"]),
    (["model.hidden_sizes=[50]", 'model.decoder={name = "conv", hidden_sizes = [10]}'],
     ["model.hidden_sizes", "model.decoder.hidden_sizes"]),
    (["guide.hidden_sizes=[50]", 'guide.encoder={name = "gated", hidden_sizes = [10]}'],
     ["guide.hidden_sizes", "guide.encoder.hidden_sizes"]),
])
def test_widths_given_twice_and_different_are_one_error_naming_both_keys(overrides, keys):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    msg = str(err.value)
    assert "\n" not in msg and all(k in msg for k in keys), msg


def test_unknown_network_and_option_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.decoder: unknown network 'cnv' \(did you mean "
                                          r"'conv'\?\)"):
        load_config(None, ["model.decoder=cnv"])
    with pytest.raises(ConfigError, match=r"guide\.encoder\.chanels: unknown key"):
        load_config(None, ['guide.encoder={name = "conv", chanels = [3]}'])
    with pytest.raises(ConfigError, match=r"model\.decoder\.init"):
        load_config(None, ['model.decoder={name = "gated", init = "glorot"}'])


# --------------------------------------------------------------------------------------------
# the networks themselves


def test_gated_layer_is_linear_response_times_sigmoid_gate():
    torch.manual_seed(0)
    layer = GatedDense(5, 3)
    x = torch.randn(4, 5)
    want = (x @ layer.h.weight.T + layer.h.bias) / (1 + torch.exp(-(x @ layer.g.weight.T
                                                                     + layer.g.bias)))
    torch.testing.assert_close(layer(x), want)
    net = GatedMLP(5, [3, 2], 4)
    assert [type(m) for m in net.gated] == [GatedDense, GatedDense] and net.out.in_features == 2


@pytest.mark.parametrize("init", ["he", "xavier"])
def test_init_draws_the_stated_distribution(init):
    """1000×1000 weights: the standard deviation within 2 % of its value (σ̂/σ has a relative
    standard error of 1/√(2·10⁶) ≈ 0.07 %), zero biases."""
    torch.manual_seed(0)
    net = MLP(1000, [1000], 10, init=init)
    w = net[0].weight.detach()
    fan_in, fan_out = 1000, 1000
    std = math.sqrt(2 / fan_in) if init == "he" else math.sqrt(2 / (fan_in + fan_out))
    assert abs(float(w.std()) / std - 1) < 0.02
    if init == "xavier":
        assert float(w.abs().max()) <= math.sqrt(6 / (fan_in + fan_out))
    assert all(float(m.bias.detach().abs().max()) == 0 for m in net.linear_layers)
    conv = nn.Conv2d(8, 16, 4)
    initialize(conv, init)
    assert float(conv.bias.detach().abs().max()) == 0


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 20), (1, 7, 5), (3, 6, 10)])
def test_conv_decoder_returns_to_the_encoders_exact_sizes(shape):
    C, H, W = shape
    channels = [4, 6]
    sizes = stage_sizes(H, W, 2)
    enc = ConvEncoder(shape, channels, [], 5)
    x = torch.rand(2, 3, C * H * W)  # two leading batch dims, as under a particle plate
    assert enc(x).shape == (2, 3, 5)
    dec = ConvDecoder(shape, channels, [10], 3, 2 * C * H * W)
    u = torch.randn(4, 2, 3)
    out = dec(u)
    assert out.shape == (4, 2, 2 * C * H * W)
    h = dec.dense(u.reshape(-1, 3)).view(-1, *dec.top)
    assert h.shape[-2:] == sizes[-1]


def test_conv_decoder_layout_puts_each_pixels_numbers_where_the_likelihood_reads_them():
    """"planes": P planes of D (``params.split(D)``); "pixels": D groups of P
    (``params.unflatten(-1, (D, P))``): the same network, its P output channels at pixel d."""
    torch.manual_seed(0)
    shape, P = (2, 4, 6), 3
    Dd = math.prod(shape)
    planes = ConvDecoder(shape, [4], [], 3, P * Dd, param_layout="planes")
    pixels = ConvDecoder(shape, [4], [], 3, P * Dd, param_layout="pixels")
    pixels.load_state_dict(planes.state_dict())
    u = torch.randn(5, 3)
    a, b = planes(u), pixels(u)
    # the raw network output: (N, P·C, H, W), channel p·C + c
    h = planes.dense(u).view(-1, *planes.top)
    raw = planes.deconvs[0](h, output_size=list(shape[1:]))  # (N, P·C, H, W)
    per_pixel = raw.view(5, P, Dd)  # (N, P, D): parameter p of pixel d
    torch.testing.assert_close(a, per_pixel.reshape(5, P * Dd))
    torch.testing.assert_close(b, per_pixel.transpose(1, 2).reshape(5, Dd * P))


def _likelihood_names():
    from vaelab.model.likelihoods import LIKELIHOODS

    return LIKELIHOODS.names()


@pytest.mark.parametrize("likelihood", _likelihood_names())
def test_conv_decoder_gives_each_pixel_the_numbers_at_its_own_position(likelihood):
    """For every registered likelihood (default options): perturbing the conv decoder's last
    layer output at one spatial position (all its channels) changes E[x | z] at that pixel and
    nowhere else, so the likelihood reads each pixel's P numbers where the network put them
    (``param_layout``: "planes", or "pixels" for a likelihood that views params as (D, P))."""
    shape = (1, 4, 6)
    cfg = load_config(None, ["model.latent_dim=2", f"model.likelihood={likelihood}",
                             'model.decoder={name = "conv", channels = [4]}'])
    vae = build_vae(cfg, 24, shape)
    dec, lik = vae.generative.decoder, vae.generative.likelihood
    u = torch.randn(1, 2)
    with torch.no_grad():
        base = lik.mean(dec(u))
        # a different shift per channel (a categorical's softmax ignores a shift common to
        # all its logits), at one spatial position only
        hook = dec.deconvs[-1].register_forward_hook(
            lambda m, i, out: out + 0.5 * (1 + torch.arange(out.shape[1]).view(1, -1, 1, 1))
            / out.shape[1] * (torch.arange(4).view(1, 1, 4, 1) == 1)
            * (torch.arange(6).view(1, 1, 1, 6) == 2))
        moved = lik.mean(dec(u))
        hook.remove()
    changed = ((moved - base).abs() > 1e-7).flatten().nonzero().flatten().tolist()
    assert changed == [1 * 6 + 2], (likelihood, changed)


@pytest.mark.parametrize("net", [
    MLP(64, [16, 8], 6),
    GatedMLP(64, [16, 8], 6),
    ConvEncoder((1, 8, 8), [4, 8], [12], 6),
    ConvDecoder((1, 8, 8), [4, 8], [12], 3, 128),
    ConvDecoder((1, 7, 5), [3], [], 3, 35),
], ids=["mlp", "gated", "conv_encoder", "conv_decoder", "conv_decoder_odd"])
def test_activations_per_row_counts_what_the_weight_layers_output(net):
    counted = []
    hooks = [m.register_forward_hook(lambda m, i, o: counted.append(o.numel()))
             for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    net(torch.randn(1, net.in_features))
    for h in hooks:
        h.remove()
    assert net.activations_per_row == sum(counted)


# --------------------------------------------------------------------------------------------
# model and guide traces on image-shaped data


@pytest.mark.parametrize("name", ["conv", "gated"])
def test_trace_of_model_and_guide_on_image_shaped_data(name):
    cfg = cfg_with(f"model.decoder={NETWORKS[name]}")
    vae = build_vae(cfg, D, SHAPE)
    assert type(vae.generative.decoder) is (ConvDecoder if name == "conv" else GatedMLP)
    assert type(vae.inference.encoder) is (ConvEncoder if name == "conv" else GatedMLP)
    x = torch.bernoulli(torch.full((4, D), 0.5))
    with pyro.plate("particles", 7, dim=-2):
        gtr = poutine.trace(vae.guide).get_trace(x)
        mtr = poutine.trace(poutine.replay(vae.model, trace=gtr)).get_trace(x)
    gtr.compute_log_prob()
    mtr.compute_log_prob()
    z, xs = gtr.nodes["z"], mtr.nodes["x"]
    assert z["value"].shape == (7, 4, 3) and z["log_prob"].shape == (7, 4)
    assert xs["fn"].batch_shape == (7, 4) and xs["fn"].event_shape == (D,)
    assert xs["log_prob"].shape == (7, 4) and bool(xs["log_prob"].isfinite().all())
    assert torch.equal(mtr.nodes["z"]["value"], z["value"])
    g_params = {n for n, s in gtr.nodes.items() if s["type"] == "param"}
    m_params = {n for n, s in mtr.nodes.items() if s["type"] == "param"}
    enc = {f"encoder$$${k}" for k, _ in vae.inference.encoder.named_parameters()}
    dec = {f"decoder$$${k}" for k, _ in vae.generative.decoder.named_parameters()}
    assert enc <= g_params and dec <= m_params
    # the decoder's output for each particle is its own: the (K, B) particles are not mixed
    u = z["value"]
    params = vae.generative.decoder(u)  # (7, 4, D)
    torch.testing.assert_close(params[3, 2], vae.generative.decoder(u[3, 2:3])[0])


# --------------------------------------------------------------------------------------------
# one training step and one IS evaluation for every network × likelihood domain


def _splits(domain: str) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    n = 48
    if domain == "binary":
        xs = [torch.bernoulli(torch.full((n, D), 0.3), generator=g) for _ in range(3)]
        return DataSplits(*xs, name="images_binary", image_shape=(8, 8), binary=True, levels=2)
    if domain == "grey":
        xs = [torch.randint(0, 256, (n, D), generator=g).float() / 255 for _ in range(3)]
        return DataSplits(*xs, name="images_grey", image_shape=(8, 8), levels=256)
    xs = [3.0 * torch.randn(n, D, generator=g) - 1.0 for _ in range(3)]  # real, any range
    return DataSplits(*xs, name="images_real", image_shape=(8, 8), values="real")


DOMAIN_LIKELIHOODS = [("binary", "bernoulli"), ("grey", "continuous_bernoulli"),
                      ("grey", "beta"), ("real", "normal")]


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("domain,likelihood", DOMAIN_LIKELIHOODS,
                         ids=[lk for _, lk in DOMAIN_LIKELIHOODS])
def test_one_training_step_and_one_is_evaluation(network, domain, likelihood, tmp_path):
    data = _splits(domain)
    cfg = cfg_with(f"model.decoder={NETWORKS[network]}", f"model.likelihood={likelihood}",
                   "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=16",
                   "train.progress=false", "train.pyro_validation=true", "train.lr=1e-2")
    pyro.set_rng_seed(0)
    before = {k: v.clone() for k, v in build_vae(cfg, D, data.shape).state_dict().items()}
    result = train(cfg, tmp_path / "run", data=data)
    after = result.vae.state_dict()
    assert set(after) == set(before)
    moved = {k.split(".")[1] for k in after if not torch.equal(after[k], before[k])}
    assert {"decoder", "encoder"} <= moved  # the step reached both networks
    run = result.run("last")
    est = evaluate(run, eval_config(run.cfg, ["eval.num_samples=8", "eval.limit=8",
                                              "eval.diagnostics=false"]))
    assert est.log_px.shape == (8,) and bool(est.log_px.isfinite().all())
    # log p̂ = logmeanexp of the K log-weights ≥ their mean, the ELBO estimate (Jensen, exact)
    assert bool((est.log_px >= est.elbo - 1e-9).all())
    assert bytes_per_particle(run.vae, D) > 4 * D


def test_bytes_per_particle_counts_the_conv_decoder():
    mlp = build_vae(cfg_with(), D, SHAPE)
    conv = build_vae(cfg_with(f"model.decoder={SMALL_CONV}"), D, SHAPE)
    extra = conv.generative.decoder.activations_per_row - mlp.generative.decoder.activations_per_row
    assert bytes_per_particle(conv, D) - bytes_per_particle(mlp, D) == 4 * 2 * extra


# --------------------------------------------------------------------------------------------
# reports lay images out in their own shape


def test_image_grid_lays_out_each_image_in_its_shape():
    imgs = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 60) / 120
    grey = image_grid(imgs[:, :20], (1, 4, 5), ncol=2)
    assert grey.shape == (4, 2 * 6 - 1)
    np.testing.assert_allclose(grey[:, :5], imgs[0, :20].reshape(4, 5).numpy())
    rgb = image_grid(imgs, (3, 4, 5), ncol=2)
    assert rgb.shape == (4, 11, 3)
    np.testing.assert_allclose(rgb[:, 6:, 1], imgs[1].reshape(3, 4, 5)[1].numpy())
    assert image_grid(imgs[:, :20], (20,), ncol=1).shape == (9, 5)  # a table: 4×5, one column


# --------------------------------------------------------------------------------------------
# bad configs: one line, exit 2, nothing written


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("vaelab: note:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


TINY = ["model.latent_dim=2", "train.epochs=1", "train.batch_size=20", "train.progress=false"]


def test_conv_on_tabular_data_is_refused_before_anything_is_written(tmp_path, capsys):
    table = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    np.save(tmp_path / "table.npy", table)
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    out = tmp_path / "run"
    code = main(["train", str(cfg), "--out", str(out), *_sets([
        "data.name=array", f"data.path={tmp_path / 'table.npy'}", "data.values=real",
        "model.likelihood=normal", "model.decoder=conv", "model.hidden_sizes=[]", *TINY])])
    line = _one_line(capsys)
    assert code == 2 and not out.exists()
    assert "model.decoder" in line and "image shape" in line and "5 features" in line, line


def test_widths_given_twice_are_refused_before_anything_is_written(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nname = "synthetic"\n[model]\nhidden_sizes = [64]\n'
                   'decoder = {name = "conv", hidden_sizes = [32]}\n')
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), *_sets(TINY)]) == 2
    line = _one_line(capsys)
    assert not out.exists()
    assert "model.hidden_sizes" in line and "model.decoder" in line, line


def test_too_many_conv_stages_for_the_image_are_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    out = tmp_path / "run"
    code = main(["train", str(cfg), "--out", str(out), *_sets([
        "data.name=synthetic", 'model.decoder={name = "conv", channels = [2, 2, 2, 2]}',
        *TINY])])
    line = _one_line(capsys)
    assert code == 2 and not out.exists()
    assert "model.decoder.channels" in line and "8×8" in line, line


def test_he_keep_bias_draws_he_weights_and_keeps_pytorchs_biases():
    """``init = "he_keep_bias"`` (the VampPrior code's ``he_init``, weights only): the same He
    weights as ``he`` under one seed, and the biases PyTorch drew (U(±1/√fan_in), nonzero),
    where ``he`` zeroes them."""
    from vaelab.model.networks import MLP

    torch.manual_seed(0)
    keep = MLP(10, [20], 5, "relu", "he_keep_bias")
    torch.manual_seed(0)
    plain = MLP(10, [20], 5, "relu", "default")
    torch.manual_seed(0)
    he = MLP(10, [20], 5, "relu", "he")
    lk, lp, lh = ([m for m in n.modules() if isinstance(m, torch.nn.Linear)]
                  for n in (keep, plain, he))
    for a, b, c in zip(lk, lp, lh):
        assert torch.equal(a.weight, c.weight)
        assert torch.equal(a.bias, b.bias) and float(a.bias.detach().abs().max()) > 0
        assert float(c.bias.detach().abs().max()) == 0.0
