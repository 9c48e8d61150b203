r"""The training loop: one short function, SVI semantics, exact resume.

Each step is what :meth:`pyro.infer.SVI.step` does — ``objective.loss_and_grads(model, guide,
x)`` then an optimizer step — with two drivers (``train.driver``):

* ``torch`` (default): one ``torch.optim.Adam`` over all parameters (one fused update instead of
  ``pyro.optim``'s optimizer per tensor, which costs a third of Pyro's per-step overhead);
* ``svi``: literally ``pyro.infer.SVI(model, guide, pyro.optim.Adam, loss=objective)``.

Both give the same parameters (tested). Per epoch: the validation ELBO, ``metrics.jsonl``, an
atomic ``checkpoints/last.pt`` (networks, optimizer, RNG states, epoch, resolved config) and
``checkpoints/best.pt`` at the best validation ELBO; optional early stopping and KL warm-up
(β from 0 to ``objective.beta`` over ``train.warmup_epochs``, scaling the latent site of both the
model and the guide). ``resume=True`` continues from ``last.pt`` to the same result as an
uninterrupted run: batch order and preprocessing noise come from generators seeded by
(seed, epoch), and the global RNG state is restored.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from vaelab.config import RunConfig, dump_toml, to_dict
from vaelab.inference.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    write_jsonl,
)
from vaelab.inference.marginal import estimate_marginal
from vaelab.inference.objectives import build_objective
from vaelab.seed import derived_generator, get_rng_state, seed_all, set_rng_state

__all__ = ["NonFiniteLossError", "TrainResult", "train", "resolve_device", "kl_weight"]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is left intact."""


@dataclass
class TrainResult:
    out_dir: Path
    vae: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid_elbo: float = -math.inf


#: settings that may change when a run is resumed (extend it, watch it, run it elsewhere)
RESUMABLE_KEYS = ("train.epochs", "train.patience", "train.progress", "train.num_threads", "train.device")


def _config_changes(saved: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring :data:`RESUMABLE_KEYS` and the [eval] section."""
    out = []
    for section in saved.keys() | new.keys():
        if section == "eval":
            continue
        a, b = saved.get(section, {}), new.get(section, {})
        for key in a.keys() | b.keys():
            name = f"{section}.{key}"
            if name not in RESUMABLE_KEYS and a.get(key) != b.get(key):
                out.append(name)
    return sorted(out)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but torch sees no CUDA device; use 'cpu'/'auto'")
    return torch.device(name)


def kl_weight(epoch: int, step_in_epoch: int, steps_per_epoch: int, warmup_epochs: int, beta: float):
    """β at a step: linear from 0 to ``beta`` over ``warmup_epochs`` epochs, then constant."""
    if warmup_epochs <= 0:
        return beta
    t = (epoch + step_in_epoch / max(1, steps_per_epoch)) / warmup_epochs
    return beta if t >= 1.0 else beta * t


def _valid_elbo(vae, x_valid, pre, cfg: RunConfig, device) -> float:
    """Single-draw ELBO per point on the validation split (hard latents for discrete models)."""
    if x_valid is None or x_valid.shape[0] == 0:
        return float("nan")
    model, guide = vae.eval_pair()
    est = estimate_marginal(
        model, guide, x_valid, num_samples=1, batch_size=max(cfg.train.batch_size, 500),
        device=device,
    )
    return float(est.elbo.mean())


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data=None,
) -> TrainResult:
    """Train the VAE described by ``cfg``, writing everything into ``out_dir``.

    :param cfg: a resolved :class:`~vaelab.config.RunConfig` (see :func:`~vaelab.config.load_config`).
    :param out_dir: the run folder: ``config.toml``, ``metrics.jsonl``, ``checkpoints/``.
    :param resume: continue from ``out_dir/checkpoints/last.pt``.
    :param data: a preloaded :class:`~vaelab.data.DataSplits` (else ``cfg.data`` is loaded).
    :returns: :class:`TrainResult` with the trained VAE (last epoch's parameters).

    Example::

        cfg = load_config("experiments/configs/gaussian_mnist.toml", ["train.epochs=2"])
        result = train(cfg, "runs/demo")
    """
    from vaelab.data import Preprocessor, iterate_batches, load_dataset
    from vaelab.vae import build_vae

    out = Path(out_dir)
    last_path, best_path = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {str(last_path)!r}")
        state = load_checkpoint(last_path)
        changed = _config_changes(state["config"], to_dict(cfg))
        if changed:
            raise ValueError(
                f"--resume: the config differs from the one saved in {str(last_path)!r} in "
                f"{', '.join(changed)} (only {', '.join(RESUMABLE_KEYS)} and [eval] may change); "
                "resume with the saved config: vaelab train DIR/config.toml --out DIR --resume"
            )
    elif last_path.exists():
        raise FileExistsError(
            f"{str(out)!r} already holds a run; pass --resume to continue it or choose another --out"
        )

    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    pyro.clear_param_store()
    pyro.enable_validation(tc.pyro_validation)
    seed_all(tc.seed)

    data = data if data is not None else load_dataset(cfg.data)
    pre = Preprocessor(cfg.data, data)
    vae = build_vae(cfg, data.train.shape[1]).to(device)
    # refuse data the likelihood cannot score before anything is written
    vae.generative.likelihood.check_data(pre.eval_batch(data.train[:2000], derived_generator(0)))
    objective = build_objective(cfg.objective, vae)
    params = list(vae.parameters())
    if tc.driver == "svi":
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": tc.lr}), loss=objective)
        optimizer = None
    else:
        svi = None
        optimizer = torch.optim.Adam(params, lr=tc.lr, fused=True)  # one fused kernel per step

    history: list[dict] = []
    start_epoch, step, best, best_epoch, stale = 0, 0, -math.inf, None, 0
    if resume:
        vae.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        else:
            svi.optim.set_state(state["optimizer"])
        history = state["history"]
        start_epoch, step = state["epoch"] + 1, state["step"]
        best, best_epoch, stale = state["best_valid_elbo"], state["best_epoch"], state["stale_epochs"]
        set_rng_state(state["rng"])
    else:
        out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", dump_toml(cfg))

    x_train = data.train
    x_valid = data.valid[: tc.valid_limit] if tc.valid_limit else data.valid
    x_valid = pre.eval_split(x_valid, tc.seed)  # fixed preprocessing noise across epochs
    n_batches = math.ceil(x_train.shape[0] / tc.batch_size)
    if tc.max_steps_per_epoch:
        n_batches = min(n_batches, tc.max_steps_per_epoch)
    latent = vae.latent

    for epoch in range(start_epoch, tc.epochs):
        if best_epoch is not None and tc.patience and stale >= tc.patience:
            break
        vae.train()
        t0 = time.perf_counter()
        noise = derived_generator(tc.seed, epoch, 1)
        total, count = 0.0, 0
        bar = tqdm(
            iterate_batches(x_train, tc.batch_size, shuffle=True, seed=tc.seed, epoch=epoch),
            total=n_batches, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not tc.progress,
            leave=False, unit="step",
        )
        for i, x in enumerate(bar):
            if i >= n_batches:
                break
            x = pre.train_batch(x, noise).to(device)
            beta = kl_weight(epoch, i, n_batches, tc.warmup_epochs, cfg.objective.beta)
            temperature = latent.temperature_at(step)
            if svi is not None:
                loss = svi.step(x, beta, temperature)
            else:
                loss = objective.loss_and_grads(vae.model, vae.guide, x, beta, temperature)
            grad_norm = None
            if optimizer is not None and tc.clip_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.clip_norm, foreach=True))
            # without clipping only the loss is checked: a NaN gradient makes the next loss NaN,
            # and the error fires before any checkpoint is written
            if not (math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))):
                raise NonFiniteLossError(
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} "
                    f"(loss={loss}, grad norm={grad_norm}) at epoch {epoch + 1}, step {step}; "
                    f"the last good checkpoint is {str(last_path)!r}. Try a lower train.lr, "
                    "train.clip_norm > 0, or a likelihood scale floor"
                )
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            total += loss
            count += x.shape[0]
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss / x.shape[0]:.2f}", beta=f"{float(beta):.2f}")
        bar.close()
        train_time = time.perf_counter() - t0
        vae.eval()
        valid_elbo = _valid_elbo(vae, x_valid, pre, cfg, device)
        temperature = latent.temperature_at(step)
        row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": total / max(1, count),
            "valid_elbo": valid_elbo,
            "beta": float(kl_weight(epoch + 1, 0, 1, tc.warmup_epochs, cfg.objective.beta)),
            "temperature": None if temperature is None else float(temperature),
            "epoch_time": train_time,
        }
        history.append(row)
        improved = math.isfinite(valid_elbo) and valid_elbo > best
        if improved or best_epoch is None:
            best, best_epoch, stale = (valid_elbo if improved else best), epoch + 1, 0
        else:
            stale += 1
        ckpt = {
            "config": to_dict(cfg),
            "model": vae.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else svi.optim.get_state(),
            "rng": get_rng_state(),
            "epoch": epoch,
            "step": step,
            "history": history,
            "best_valid_elbo": best,
            "best_epoch": best_epoch,
            "stale_epochs": stale,
        }
        save_checkpoint(last_path, ckpt)
        if best_epoch == epoch + 1:
            save_checkpoint(best_path, {"config": ckpt["config"], "model": ckpt["model"], "epoch": epoch})
        write_jsonl(out / "metrics.jsonl", history)
        if tc.progress:
            tqdm.write(
                f"epoch {epoch + 1}: train -ELBO {row['train_loss']:.2f}, "
                f"valid ELBO {valid_elbo:.2f}, {train_time:.1f}s"
            )
    return TrainResult(out, vae, history, best_epoch, best)
