"""vaelab's training step vs a hand-written PyTorch VAE step (784-400-20 MLP, batch 128, Adam).

Both compute the same single-sample ELBO estimator (log p(x|z) + log p(z) − log q(z|x), z by
reparameterization) on the same batch and take one Adam step. Rounds alternate between variants
(paired measurement, so machine noise hits both alike); the table reports the median ms/step over
rounds and the ratio to the hand-written step measured in the same run.

    python benchmarks/train_step.py [--rounds 15] [--steps 30] [--threads 2]
    python benchmarks/train_step.py --smoke   # a 64-32-4 VAE, 1 round of 2 steps: seconds
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import NamedTuple

import pyro
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measuring, paired_rounds, parse, parser, warm_up  # noqa: E402

from vaelab.inference.objectives import build_objective  # noqa: E402
from vaelab.resolve import load_config  # noqa: E402
from vaelab.vae import build_vae  # noqa: E402


class Sizes(NamedTuple):
    D: int  #: data width
    H: int  #: hidden width
    Z: int  #: latent width
    B: int  #: batch size


FULL = Sizes(784, 400, 20, 128)
SMOKE = Sizes(64, 32, 4, 16)


class PlainVAE(nn.Module):
    def __init__(self, s: Sizes):
        super().__init__()
        self.Z = s.Z
        self.enc = nn.Sequential(nn.Linear(s.D, s.H), nn.ReLU(), nn.Linear(s.H, 2 * s.Z))
        self.dec = nn.Sequential(nn.Linear(s.Z, s.H), nn.ReLU(), nn.Linear(s.H, s.D))

    def loss(self, x):
        z_loc, raw = self.enc(x).split(self.Z, -1)  # (B, Z) each
        z_scale = F.softplus(raw) + 1e-5
        z = z_loc + z_scale * torch.randn_like(z_loc)
        log_q = torch.distributions.Normal(z_loc, z_scale).log_prob(z).sum(-1)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        logits = self.dec(z)  # (B, D); the fused Bernoulli log-likelihood vaelab also uses
        log_px = (logits * x).sum(-1) - F.softplus(logits).sum(-1)
        return -(log_px + log_pz - log_q).sum()


def plain_step(vae, opt, x):
    loss = vae.loss(x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def make_vaelab(s: Sizes, driver: str, jit: str = "auto"):
    cfg = load_config(None, [
        f"model.latent_dim={s.Z}", f"model.hidden_sizes=[{s.H}]", "data.name=synthetic",
        f"objective.jit={jit}",
    ])
    vae = build_vae(cfg, s.D)
    objective = build_objective(cfg.objective, vae)
    if driver == "svi":
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=objective)
        return lambda x: svi.step(x, 1.0, None)
    params = list(vae.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)  # as vaelab.runs.train does

    def step(x):
        loss = objective.loss_and_grads(vae.model, vae.guide, x, 1.0, None)
        if not math.isfinite(loss):  # the loop's NaN check
            raise FloatingPointError(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


#: (label, overrides) of each registry objective, on the Gaussian VAE or a categorical one
OBJECTIVES = [
    ("trace", []),
    ("mean_field", ["objective.name=mean_field"]),
    ("stl", ["objective.name=stl"]),
    ("iwae K=5", ["objective.name=iwae", "objective.num_particles=5"]),
    ("iwae_dreg K=5", ["objective.name=iwae_dreg", "objective.num_particles=5"]),
    ("renyi α=0.5 K=5", ["objective.name=renyi", "objective.alpha=0.5",
                         "objective.num_particles=5"]),
]
CATEGORICAL = ["model.latent={name='categorical', num_variables=20, num_classes=10}",
               "model.prior=categorical"]
CATEGORICAL_OBJECTIVES = [
    ("trace (Gumbel-softmax)", [*CATEGORICAL, "guide.family=relaxed"]),
    ("graph (REINFORCE + baseline)", [*CATEGORICAL, "guide.family=categorical",
                                      "objective.name=graph"]),
    ("enum (N=2, K=10: 100 states)", [
        "model.latent={name='categorical', num_variables=2, num_classes=10}",
        "model.prior=categorical", "guide.family=categorical", "objective.name=enum"]),
]


def objective_step(s: Sizes, overrides: list[str], device: str | torch.device = "cpu"):
    """One training step of the default path (jit auto, torch driver) for ``overrides``, the
    VAE on ``device``."""
    from vaelab.data import DataSplits, Preprocessor
    from vaelab.runs.stepper import Stepper
    from vaelab.runs.train import choose_objective

    cfg = load_config(None, [f"model.latent_dim={s.Z}", f"model.hidden_sizes=[{s.H}]",
                             "data.name=synthetic", f"train.batch_size={s.B}", *overrides])
    vae = build_vae(cfg, s.D).to(device)
    x = torch.bernoulli(torch.full((4 * s.B, s.D), 0.3))
    data = DataSplits(x, x[: s.B], x[: s.B], "bench", binary=True, levels=2)
    stepper = Stepper(cfg.train, vae, *choose_objective(cfg, vae, data,
                                                        Preprocessor(cfg.data, data)))
    tau = vae.latent.temperature_at(0)
    return lambda xb: stepper.step(xb, 1.0, tau)


def objective_table(args, sizes: Sizes, warmup: int, reference) -> None:
    """ms/step of each objective on its default path, and its ratio to ``trace`` on the same
    latent type: each is timed in rounds paired with the hand-written ``reference`` step (one
    Pyro model at a time: the param store is process-global), and the ratio is that of their
    median ratios to the reference."""
    x = torch.bernoulli(torch.full((sizes.B, sizes.D), 0.3))
    print(f"\nPer objective (default path), {sizes.D}-{sizes.H}-{sizes.Z}, batch {sizes.B}: "
          "ms/step and ratio to trace on the same latent type")
    print(f"{'objective':32s} {'ms/step':>8s} {'ratio':>6s}")
    for group in (OBJECTIVES, CATEGORICAL_OBJECTIVES):
        base = None
        for label, overrides in group:
            pyro.clear_param_store()
            step = objective_step(sizes, overrides)
            ms, _, vs_ref = paired_rounds(reference, step, x, rounds=max(1, args.rounds // 3),
                                          steps=args.steps, warmup=warmup)
            base = vs_ref if base is None else base
            print(f"{label:32s} {ms:8.2f} {vs_ref / base:6.2f}")


def main(argv=None) -> int:
    p = parser(__doc__, rounds=15)
    p.add_argument("--steps", type=int, default=30)
    args = parse(p, argv, threads=2,
                 smoke_help="tiny sizes, 1 round of 2 steps (tests/test_benchmarks.py)",
                 smoke={"rounds": 1, "steps": 2})
    sizes, warmup = (SMOKE, 2) if args.smoke else (FULL, 10)
    with measuring(args.threads):
        return _run(args, sizes, warmup)


def _run(args, sizes: Sizes, warmup: int) -> int:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((sizes.B, sizes.D), 0.3))

    plain = PlainVAE(sizes)
    # the same optimizer as vaelab's torch driver
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3, fused=True)
    reference = lambda x: plain_step(plain, plain_opt, x)  # noqa: E731
    variants = {  # the default, objective.jit = "auto", compiles this allowlisted model
        "vaelab default (jit auto: JitTrace_ELBO)": ("torch", "auto"),
        "vaelab eager (objective.jit = false)": ("torch", "false"),
        "vaelab literal SVI + pyro.optim (eager)": ("svi", "false"),
        "vaelab literal SVI + pyro.optim (jit)": ("svi", "auto"),
    }

    warm_up(reference, x, warmup)
    print(f"{sizes.D}-{sizes.H}-{sizes.Z} VAE, batch {sizes.B}, {args.threads} threads, "
          f"{args.rounds} paired rounds x {args.steps} steps")
    print(f"{'variant':40s} {'ms/step':>8s} {'ref ms':>7s} {'ratio':>6s}")
    for name, (driver, jit) in variants.items():
        # one model at a time: Pyro's param store is process-global
        pyro.clear_param_store()
        step = make_vaelab(sizes, driver, jit)  # warmed up (and JIT-compiled) in the rounds
        ms, ref_ms, ratio = paired_rounds(reference, step, x, rounds=args.rounds,
                                          steps=args.steps, warmup=warmup)
        print(f"{name:40s} {ms:8.2f} {ref_ms:7.2f} {ratio:6.2f}")
    objective_table(args, sizes, warmup, reference)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
