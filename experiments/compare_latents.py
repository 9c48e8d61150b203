r"""Gaussian vs discrete latents on statically binarized MNIST, with one budget for all.

Every run (configs ``experiments/configs/latents_*.toml``) has the same 784-512-256 encoder and
256-512-784 decoder (Jang et al. 2017's widths), Bernoulli likelihood, Adam 1e-3, batch 100 and
the same number of gradient steps. Two suites:

``--suite jang`` (default; ``latents.md``): Jang et al.'s latent, N = 20 variables × K = 10 classes.

* ``gaussian``: z ∈ ℝ^20, Trace_ELBO;
* ``gumbel_relaxed``: Gumbel-softmax, relaxed KL (Maddison et al.);
* ``gumbel_categorical``: Gumbel-softmax, categorical KL (Jang et al.);
* ``straight_through``: straight-through Gumbel (one-hot decoder input), categorical KL;
* ``reinforce``: unrelaxed categorical posterior, TraceGraph_ELBO + learned baseline.

Capacity: the categorical code holds at most N log K = 20 log 10 ≈ 46 nats per image; the Gaussian
gets the same number of latent variables (20). Its KL is not capped, so it is the stronger model
at equal width; the question is how much of that gap each discrete estimator closes.

``--suite small`` (``latents_small.md``): N = 2 × K = 10, i.e. 100 joint states, small enough for
exact enumeration: the same runs plus ``enum`` (TraceEnum_ELBO, the exact ELBO gradient), a
Gaussian with z ∈ ℝ^2, and the *exact* test log p(x) of every discrete model.

The discrete models are always scored as discrete models, with hard one-hot latents
(:func:`vaelab.model.categorical.hard_pair`): the test ELBO (exact log p(z) − log q(z|x),
``--elbo-draws`` draws per point, the whole test set) and log p̂(x) by importance sampling with
the categorical posterior as proposal (K = ``--num-samples`` on ``--test-points`` test images
spread evenly over the test split, which is ordered: its first images are all zeros), plus
category usage (:func:`vaelab.model.categorical.category_usage`). Writes ``<prefix>.md``,
``<prefix>.json`` and PNGs (reconstructions, prior samples, one-variable-at-a-time traversals)
into ``--out``; the runs go to ``runs/compare_latents[_small]`` and are resumed, not retrained.

::

    python experiments/compare_latents.py                      # latents.md (background!)
    python experiments/compare_latents.py --suite small        # latents_small.md
    python experiments/compare_latents.py --smoke --out /tmp/l  # seconds, synthetic data

References:
  1. E. Jang, S. Gu, B. Poole. *Categorical Reparameterization with Gumbel-Softmax*. ICLR 2017.
  2. C. J. Maddison, A. Mnih, Y. W. Teh. *The Concrete Distribution*. ICLR 2017.
  3. A. Mnih, K. Gregor. *Neural Variational Inference and Learning in Belief Networks*. ICML 2014.
  4. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
LABELS = {
    "gaussian": "Gaussian, z ∈ ℝ^{d} (Trace_ELBO)",
    "enum": "exact enumeration (TraceEnum_ELBO)",
    "gumbel_relaxed": "Gumbel-softmax, relaxed KL (Maddison)",
    "gumbel_categorical": "Gumbel-softmax, categorical KL (Jang)",
    "straight_through": "straight-through Gumbel, categorical KL",
    "reinforce": "REINFORCE + learned baseline (TraceGraph)",
}
SUITES = {
    # name: (file prefix, runs folder, variants, (N, K) override or None, Gaussian dim or None)
    "jang": ("latents", "compare_latents",
             ["gaussian", "gumbel_relaxed", "gumbel_categorical", "straight_through", "reinforce"],
             None, None),
    "small": ("latents_small", "compare_latents_small",
              ["gaussian", "enum", "gumbel_relaxed", "gumbel_categorical", "straight_through",
               "reinforce"],
              (2, 10), 2),
}
#: Jang et al. 2017, Table 2 (binarized MNIST, 784-512-256, 20 × 10 latents), fully trained:
#: test −ELBO. Recalled from the paper, not re-measured here.
JANG = {"gumbel_categorical": "≈ 101.5", "straight_through": "≈ 107.8"}
SMOKE = [
    "data.name=synthetic", "model.hidden_sizes=[32]", "guide.hidden_sizes=[32]",
    "train.valid_limit=50", "train.max_steps_per_epoch=4", "train.epochs=2",
]
SMOKE_LATENT = (4, 3)  # 81 states: every variant, enum included, and the exact log p(x)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(HERE / "results"), help="folder of the table and PNGs")
    p.add_argument("--runs", default=None, help="run folders (default: runs/compare_latents*)")
    p.add_argument("--suite", choices=list(SUITES), default="jang")
    p.add_argument("--smoke", action="store_true", help="tiny budget on synthetic data")
    p.add_argument("--variants", nargs="+", default=None, choices=list(LABELS))
    p.add_argument("--epochs", type=int, default=None, help="default: the configs' (10)")
    p.add_argument("--num-samples", "-K", type=int, default=None, help="IS samples (default 5000)")
    p.add_argument("--test-points", type=int, default=None, help="IS test images (default 500)")
    p.add_argument("--elbo-draws", type=int, default=10, help="draws per point of the test ELBO")
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--table-only", action="store_true",
                   help="rewrite <prefix>.md from <prefix>.json in --out (no training, no scoring)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# figures


def _traversal_images(vae, x0: torch.Tensor) -> torch.Tensor:
    """Decode the hard code of ``x0 (1, D)`` with one variable set to each class in turn:
    ``(N K, D)``, row n = variable n, column k = class k."""
    latent = vae.latent
    N, K = latent.num_variables, latent.num_classes
    q = vae.inference
    code = q.posterior.logits_from(q.encoder(x0))[0].argmax(-1)  # (N,)
    z = torch.nn.functional.one_hot(code, K).to(x0.dtype)  # (N, K)
    zs = z.expand(N, K, N, K).clone()  # (n, k, N, K): variable n set to class k
    for n in range(N):
        zs[n, :, n] = torch.eye(K, dtype=x0.dtype)
    g = vae.generative
    return g.likelihood.mean(g.decoder(zs.reshape(N * K, N * K)))  # (N K, D)


@torch.no_grad()
def write_figures(runs: dict, x_show: torch.Tensor, shape, out: Path, prefix: str) -> list[str]:
    from vaelab.report import save_grid

    files = []
    torch.manual_seed(0)
    rows = [x_show] + [run.vae.reconstruct(x_show) for run in runs.values()]
    grid = torch.stack(rows, 0).reshape(-1, x_show.shape[1])  # (1 + V) rows of n images
    f = f"{prefix}_reconstructions.png"
    save_grid(out / f, grid, shape, ncol=x_show.shape[0],
              title="rows: input, " + ", ".join(runs) + " (one hard draw z ~ q(z|x))")
    files.append(f)
    samples = torch.cat([run.vae.generative.sample(16) for run in runs.values()])
    f = f"{prefix}_samples.png"
    save_grid(out / f, samples, shape, ncol=16,
              title="prior samples (mean images), one row per run: " + ", ".join(runs))
    files.append(f)
    for name, run in runs.items():
        if run.vae.latent.continuous:
            continue
        # the first shown image that is not a zero, for a more telling traversal
        imgs = _traversal_images(run.vae, x_show[1:2])
        f = f"{prefix}_traversal_{name}.png"
        save_grid(out / f, imgs, shape, ncol=run.vae.latent.num_classes,
                  title=f"{name}: row n = variable n set to class 0..K−1")
        files.append(f)
    return files


# --------------------------------------------------------------------------------------------
# one run


def spread(n: int, k: int) -> torch.Tensor:
    """``k`` indices spread evenly over ``range(n)``."""
    k = min(k, n)
    return torch.div(torch.arange(k) * n, k, rounding_mode="floor")


def run_variant(name: str, args, runs_dir: Path, data) -> tuple[dict, object]:
    from vaelab.config import load_config
    from vaelab.inference import exact
    from vaelab.inference.train import train
    from vaelab.model.categorical import category_usage
    from vaelab.run import evaluate, load_run

    _, _, _, latent_nk, gaussian_dim = SUITES[args.suite]
    overrides = [f"train.num_threads={args.threads}", "train.progress=false"]
    if args.smoke:
        latent_nk, gaussian_dim = SMOKE_LATENT, 4
        overrides += SMOKE
    if name == "gaussian" and gaussian_dim:
        overrides.append(f"model.latent_dim={gaussian_dim}")
    elif name != "gaussian" and latent_nk:
        overrides += [f"model.latent.num_variables={latent_nk[0]}",
                      f"model.latent.num_classes={latent_nk[1]}"]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = load_config(HERE / "configs" / f"latents_{name}.toml", overrides + args.overrides)
    run_dir = runs_dir / name
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    t0 = time.perf_counter()
    result = train(cfg, run_dir, resume=resume, data=data)
    print(f"[{name}] trained ({time.perf_counter() - t0:.0f}s): {result.history[-1]}", flush=True)

    run = load_run(run_dir, "last", data=data)  # equal steps: the last checkpoint, not the best
    K = args.num_samples or (100 if args.smoke else cfg.eval.num_samples)
    T = args.test_points or (50 if args.smoke else 500)
    idx = spread(data.test.shape[0], T)
    sub = dataclasses.replace(run, data=data.replace(test=data.test[idx]))
    t0 = time.perf_counter()
    elbo_est = evaluate(run, num_samples=args.elbo_draws, limit=None, exact=False)
    is_est = evaluate(sub, num_samples=K, limit=None, exact=False)
    eval_time = time.perf_counter() - t0
    history = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s]
    latent = run.vae.latent
    row = {
        "name": name,
        "label": LABELS[name].format(d=cfg.model.latent_dim),
        "latent": "z ∈ ℝ^%d" % cfg.model.latent_dim if latent.continuous
        else f"N = {latent.num_variables} × K = {latent.num_classes}",
        "epochs": len(history),
        "steps": history[-1]["step"],
        "test_elbo": float(elbo_est.elbo.mean()),
        "test_elbo_stderr": elbo_est.summary()["elbo_stderr"],
        "test_points_elbo": elbo_est.num_points,
        "is_log_px": float(is_est.log_px.mean()),
        "is_log_px_stderr": is_est.summary()["log_likelihood_stderr"],
        "is_elbo": float(is_est.elbo.mean()),
        "is_mc_stderr": float(is_est.mc_stderr.mean()),
        "is_points": is_est.num_points,
        "K": K,
        "epoch_time": sum(r["epoch_time"] for r in history) / len(history),
        "final_train_loss": history[-1]["train_loss"],
        "final_temperature": history[-1]["temperature"],
        "eval_time": eval_time,
        "config": f"experiments/configs/latents_{name}.toml",
    }
    if not latent.continuous:
        x_test = run.pre.eval_split(run.split("test"), run.cfg.eval.seed)
        row.update(category_usage(run.vae, x_test).summary())
        truth = exact.exact_log_likelihood(run.vae, x_test)
        row["exact_log_px"] = None if truth is None else float(truth.mean())
    return row, run


# --------------------------------------------------------------------------------------------
# table


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def _f(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def write_table(
    rows: list[dict], figures: list[str], args, out: Path, command: str, runs_dir: Path
) -> Path:
    prefix = SUITES[args.suite][0]
    r0 = rows[0]
    has_exact = any(r.get("exact_log_px") is not None for r in rows)
    discrete = next((r["latent"] for r in rows if r["latent"].startswith("N")), "—")
    gaussian = next((r["latent"] for r in rows if r["latent"].startswith("z")), "—")
    jang = args.suite == "jang"
    lines = [
        f"# Gaussian vs discrete latents on binarized MNIST ({discrete})"
        + (" — SMOKE RUN" if args.smoke else ""),
        "",
        f"Regenerate: `{command}` (finished runs in `{_relative(runs_dir)}` are reused; "
        "delete them to retrain).",
        "",
        *(
            ["**Smoke run**: synthetic 8×8 data, hidden [32], a few steps; the numbers only "
             "check that everything runs.", ""]
            if args.smoke else []
        ),
        f"Budget, identical for every run: {r0['epochs']} epochs = {r0['steps']} Adam steps "
        "(lr 1e-3, batch 100) on the 50,000 training images of statically binarized MNIST "
        "(Larochelle), one latent sample per step (all states for enumeration), seed 0; encoder "
        "784-512-256, decoder 256-512-784 (Jang et al. 2017's widths); Bernoulli likelihood. "
        f"Discrete runs: {discrete}, uniform prior; Gumbel runs anneal "
        "τ = max(0.5, exp(−10⁻⁴ t)) every 500 steps (Jang et al.'s schedule, recalled) and the "
        f"relaxed-KL run uses a relaxed prior at temperature 0.5. Gaussian: {gaussian}. "
        f"Threads: {args.threads}; the 2 CPU cores were shared with other jobs, so times are "
        "noisy.",
        "",
        "Scoring, always of the **discrete** model (hard one-hot latents, the categorical "
        "posterior of the guide's logits, whatever relaxation trained it): test ELBO with exact "
        f"log p(z) − log q(z|x), {args.elbo_draws} draws per point on all "
        f"{r0['test_points_elbo']} test images"
        + (", and the exact log p(x) by summing over all joint states" if has_exact else "")
        + f"; log p̂(x) by importance sampling (K = {r0['K']}, the posterior as proposal) on "
        f"{r0['is_points']} test images spread evenly over the test split (it is ordered by "
        "digit: its first 500 images are zeros), with the mean of the same K log-weights as the "
        "ELBO beside it. Last checkpoint (equal steps), not the best.",
        "",
        "| run | test −ELBO (all) | "
        + ("exact −log p(x) (all) | " if has_exact else "")
        + "−ELBO (IS points) | −log p̂(x), IS | training loss (last epoch) | s / epoch | "
        "classes used / K | "
        "aggregate perplexity | posterior perplexity | final τ |"
        + (" Jang et al. −ELBO (recalled) |" if jang else ""),
        "|---|---:|" + ("---:|" if has_exact else "") + "---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if jang else ""),
    ]
    for r in rows:
        usage = (
            f"{r['classes_used_mean']:.1f} (min {r['classes_used_min']})"
            if "classes_used_mean" in r else "—"
        )
        ex = r.get("exact_log_px")
        lines.append(
            f"| {r['label']} | {-r['test_elbo']:.2f} ± {r['test_elbo_stderr']:.2f} | "
            + (f"{_f(None if ex is None else -ex)} | " if has_exact else "")
            + f"{-r['is_elbo']:.2f} | {-r['is_log_px']:.2f} ± {r['is_log_px_stderr']:.2f} | "
            f"{r['final_train_loss']:.2f} | {r['epoch_time']:.1f} | {usage} | {_f(r.get('aggregate_perplexity_mean'))} | "
            f"{_f(r.get('posterior_perplexity_mean'))} | {_f(r['final_temperature'], 3)} |"
            + (f" {JANG.get(r['name'], '—')} |" if jang else "")
        )
    lines += [
        "",
        "± is the standard error across test points, not the Monte Carlo error (the mean "
        f"delta-method MC standard error of the IS column is at most "
        f"{max(r['is_mc_stderr'] for r in rows):.2f} nats per point). Category usage over the "
        "test set: *classes used* = classes that are the argmax of q(z_n|x) for at least one "
        "image (mean over the N variables); *aggregate perplexity* = exp H of the average "
        "posterior (effective number of classes the data use); *posterior perplexity* = mean "
        "exp H(q(z_n|x)) (1 = a deterministic code, K = the prior). *Training loss* = the "
        "training objective averaged over the last epoch (nats per image): the negative of the "
        "relaxed-model ELBO, of the Jang surrogate, or of the discrete ELBO, so it is comparable "
        "with the test −ELBO only for REINFORCE, enumeration and the Gaussian.",
        "",
        "What each training objective bounds (the table scores all of them as the discrete "
        "model): relaxed KL — a true ELBO of the *relaxed* model (decoder fed simplex points); "
        "categorical KL — a surrogate mixing the relaxed reconstruction term with the discrete "
        "KL, a bound of neither model; straight-through — the discrete model's ELBO with a "
        "biased gradient; REINFORCE and enumeration — the discrete model's ELBO, with an "
        "unbiased but noisy gradient and with the exact gradient; Gaussian — its own ELBO.",
        "",
    ]
    if jang:
        lines += [
            "Reference (not re-measured): Jang et al. 2017 report a test −ELBO ≈ 101.5 "
            "(Gumbel-softmax) and ≈ 107.8 (straight-through) for this architecture after full "
            "training (recalled from the paper's Table 2; their protocol may differ). This "
            "budget is far shorter.",
            "",
        ]
    lines += [*[f"![{f}]({f})" for f in figures], ""]
    path = out / f"{prefix}.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from vaelab.config import load_config
    from vaelab.data import load_dataset

    prefix, runs_name, variants, _, _ = SUITES[args.suite]
    out = Path(args.out)
    if args.table_only:
        rows = json.loads((out / f"{prefix}.json").read_text())
        figures = sorted(p.name for p in out.glob(f"{prefix}_*.png")
                         if prefix != "latents" or not p.name.startswith("latents_small"))
        argv_ = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--table-only"]
        command = " ".join(["python experiments/compare_latents.py", *argv_])
        runs_dir = Path(args.runs) if args.runs else HERE.parent / "runs" / runs_name
        print(write_table(rows, figures, args, out, command, runs_dir))
        return 0
    if args.smoke:
        variants = ["gaussian", "enum", "gumbel_relaxed", "gumbel_categorical",
                    "straight_through", "reinforce"]
    variants = args.variants or variants
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs) if args.runs else (
        out / "runs" if args.smoke else HERE.parent / "runs" / runs_name
    )
    first = load_config(
        HERE / "configs" / f"latents_{variants[0]}.toml",
        (SMOKE if args.smoke else []) + [o for o in args.overrides if o.startswith("data.")],
    )
    data = load_dataset(first.data)
    rows, runs = [], {}
    for name in variants:
        row, run = run_variant(name, args, runs_dir, data)
        rows.append(row)
        runs[name] = run
        print(f"[{name}] {json.dumps(row)}", flush=True)
    x_show = runs[variants[0]].pre.eval_split(data.test[spread(data.test.shape[0], 12)], 0)
    figures = write_figures(runs, x_show, data.image_shape, out, prefix)
    (out / f"{prefix}.json").write_text(json.dumps(rows, indent=2))
    command = "python experiments/compare_latents.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    path = write_table(rows, figures, args, out, command.strip(), runs_dir)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
