"""Whole epochs: vaelab's default training against a Pyro-example-style baseline, the epoch's
breakdown, and the denormal slowdown.

Network 784-300-300-40 (ReLU), Bernoulli likelihood, standard normal prior, batch 100, Adam 1e-3,
statically binarized MNIST (50,000 training images; a synthetic set with ``--smoke``), one thread.

* **baseline**: written the way Pyro's own ``examples/vae/vae.py`` is (a model and a guide
  function registering their networks with ``pyro.module``, ``pyro.plate``, ``SVI`` with
  ``pyro.optim.Adam`` and ``Trace_ELBO``), re-implemented here on the same data and network, no
  vaelab code; the loss of every step is read back, as that example does.
* **plain torch**: the same network written as a user would in plain PyTorch (an encoder and a
  decoder ``nn.Sequential``, the reparameterized draw, the Bernoulli log-likelihood as
  ``binary_cross_entropy_with_logits``, the analytic Gaussian KL, ``torch.optim.Adam``), the
  ELBO of the validation points computed at the end of every epoch (no_grad, the same 2000
  points as vaelab's validation), the loss read back every step;
* **vaelab**: ``vaelab.runs.train.train`` with its defaults (``objective.jit = "auto"``,
  ``train.flush_denormal = true``), validation on 2000 points and a checkpoint commit every
  epoch — the whole epoch is timed, and split into step, data (batching, preprocessing, the
  progress bar), validation and I/O (the commit).

Both are run with and without flushing denormals; the table gives median epoch times and the
ratios measured in the same run, and epoch 1 against the last epoch for each, which shows the
denormal drift of ReLU training.

    python benchmarks/epoch.py [--epochs 30]
    python benchmarks/epoch.py --smoke        # synthetic data, 2 epochs: seconds
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import vaelab.runs.train as train_module
from vaelab.data import load_dataset
from vaelab.resolve import load_config

CONFIG = ["data.name=binarized_mnist", "model.latent_dim=40", "model.hidden_sizes=[300, 300]",
          "train.batch_size=100", "train.lr=1e-3", "train.valid_limit=2000",
          "train.progress=false", "train.num_threads=1"]
SMOKE = ["data.name=synthetic", "model.latent_dim=4", "model.hidden_sizes=[32, 32]",
         "train.batch_size=20", "train.valid_limit=50", "train.progress=false",
         "train.num_threads=1"]


# --------------------------------------------------------------------------------------------
# the baseline, in the style of Pyro's examples/vae/vae.py


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class BaselineVAE(nn.Module):
    def __init__(self, D: int, hidden: list[int], z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = mlp([D, *hidden[::-1], 2 * z_dim])
        self.decoder = mlp([z_dim, *hidden, D])

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1),
                        obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, raw = self.encoder(x).split(self.z_dim, -1)
            pyro.sample("z", dist.Normal(z_loc, nn.functional.softplus(raw) + 1e-5).to_event(1))


def baseline_epochs(x_train: torch.Tensor, cfg, epochs: int) -> list[float]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = BaselineVAE(x_train.shape[1], cfg.model.hidden_sizes, cfg.model.latent_dim)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": cfg.train.lr}),  # type: ignore
              loss=Trace_ELBO())
    times = []
    B = cfg.train.batch_size
    for _ in range(epochs):
        t0 = time.perf_counter()
        total = 0.0
        for idx in torch.randperm(x_train.shape[0]).split(B):
            total += svi.step(x_train[idx])
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------------------------
# plain torch, as a user would write it


def torch_epochs(x_train: torch.Tensor, x_valid: torch.Tensor, cfg, epochs: int) -> list[float]:
    """Epoch seconds of a plain-torch VAE (analytic KL, Adam), validation included."""
    torch.manual_seed(0)
    Z, B = cfg.model.latent_dim, cfg.train.batch_size
    enc = mlp([x_train.shape[1], *cfg.model.hidden_sizes[::-1], 2 * Z])
    dec = mlp([Z, *cfg.model.hidden_sizes, x_train.shape[1]])
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.train.lr)

    def neg_elbo(x: torch.Tensor) -> torch.Tensor:
        z_loc, raw = enc(x).split(Z, -1)
        z_scale = nn.functional.softplus(raw) + 1e-5
        z = z_loc + z_scale * torch.randn_like(z_loc)
        rec = nn.functional.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")
        kl = 0.5 * (z_loc.pow(2) + z_scale.pow(2) - 1).sum() - z_scale.log().sum()
        return rec + kl

    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for idx in torch.randperm(x_train.shape[0]).split(B):
            loss = neg_elbo(x_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            float(loss.detach())
        with torch.no_grad():
            sum(float(neg_elbo(v)) for v in x_valid.split(B))
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------------------------
# vaelab, with the epoch split into its parts


class Clock:
    def __init__(self):
        self.parts: dict[str, float] = {"step": 0.0, "validation": 0.0, "I/O": 0.0}

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[part] += time.perf_counter() - t0
        return timed


def vaelab_epochs(cfg, data, epochs: int, out: Path) -> tuple[list[dict], Clock]:
    clock = Clock()
    patches = [(train_module.Stepper, "step"), (train_module, "validate"),
               (train_module, "save_epoch")]
    originals = [getattr(obj, name) for obj, name in patches]
    train_module.Stepper.step = clock.wrap("step", originals[0])  # type: ignore[method-assign]
    train_module.validate = clock.wrap("validation", originals[1])
    train_module.save_epoch = clock.wrap("I/O", originals[2])
    t0 = time.perf_counter()
    try:  # the per-epoch progress lines go to stderr: stdout is the results table
        with contextlib.redirect_stdout(sys.stderr):
            result = train_module.train(cfg.model_copy(update={"train": cfg.train.model_copy(
                update={"epochs": epochs})}), out, data=data)
    finally:
        for (obj, name), fn in zip(patches, originals):
            setattr(obj, name, fn)
    clock.parts["total"] = time.perf_counter() - t0
    return result.history, clock


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="synthetic data, 2 epochs")
    args = p.parse_args(argv)
    epochs = 2 if args.smoke else args.epochs
    cfg = load_config(None, SMOKE if args.smoke else CONFIG)
    torch.set_num_threads(1)
    data = load_dataset(cfg.data)
    rows, breakdown = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for flush in (True, False):
            with contextlib.ExitStack():
                torch.set_flush_denormal(flush)
                base = baseline_epochs(data.train, cfg, epochs)
                plain = torch_epochs(data.train, data.valid[:cfg.train.valid_limit], cfg, epochs)
                torch.set_flush_denormal(False)
            c = cfg.model_copy(update={"train": cfg.train.model_copy(
                update={"flush_denormal": flush})})
            history, clock = vaelab_epochs(c, data, epochs, Path(tmp) / f"run{flush}")
            whole = [r["epoch_time"] for r in history]
            per_epoch_extra = (clock.parts["validation"] + clock.parts["I/O"]) / epochs
            rows[flush] = (base, [t + per_epoch_extra for t in whole], history, plain)
            if flush:
                breakdown = clock
    print(f"whole epochs, {epochs} each, 1 thread, batch {cfg.train.batch_size}, "
          f"{data.train.shape[0]} training points, network {cfg.model.hidden_sizes}\n")
    print("| variant | flush denormals | median epoch s | epoch 1 s | last epoch s "
          "| ratio to baseline (same flushing) | ratio to plain torch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for flush, (base, ours, _, plain) in rows.items():
        b, o, t = statistics.median(base), statistics.median(ours), statistics.median(plain)
        print(f"| Pyro-example baseline | {flush} | {b:.2f} | {base[0]:.2f} | {base[-1]:.2f} "
              f"| 1.00x | {b / t:.2f}x |")
        print(f"| plain torch (analytic KL, Adam) | {flush} | {t:.2f} | {plain[0]:.2f} "
              f"| {plain[-1]:.2f} | {t / b:.2f}x | 1.00x |")
        print(f"| vaelab default | {flush} | {o:.2f} | {ours[0]:.2f} | {ours[-1]:.2f} "
              f"| {o / b:.2f}x | {o / t:.2f}x |")
    assert breakdown is not None
    parts = breakdown.parts
    epoch_pass = sum(r["epoch_time"] for r in rows[True][2])
    split = {"step": parts["step"], "data (batching, preprocessing, bar)":
             epoch_pass - parts["step"], "validation": parts["validation"], "I/O": parts["I/O"]}
    total = sum(split.values())
    print("\nvaelab epoch breakdown (flushing), share of the epoch\n")
    print("| part | s per epoch | share | ratio to the step |")
    print("|---|---:|---:|---:|")
    for name, t in split.items():
        print(f"| {name} | {t / epochs:.3f} | {100 * t / total:.1f} % "
              f"| {t / max(parts['step'], 1e-9):.3f}x |")
    h = {f: rows[f][2][-1]["valid_elbo"] for f in rows}
    print(f"\nfinal validation ELBO: flushing {h[True]:.3f}, not flushing {h[False]:.3f} "
          f"(difference {h[True] - h[False]:+.3f} nats)")
    print("targets: vaelab / baseline <= 0.75x (both flushing); vaelab / plain torch <= 1.05x "
          "(same flushing); nothing outside the step > 5 % of an epoch")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
          "(a shared machine: the epochs of one variant ran after the other's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
