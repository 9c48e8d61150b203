r"""ELBO estimators compared on statically binarized MNIST: one architecture, one step budget.

Seven runs that differ only in ``objective``: ``trace``, ``mean_field``, ``stl`` (one particle),
``iwae`` and ``iwae_dreg`` with K = 5 and K = 50. The architecture is Burda et al. (2016)'s
one-stochastic-layer model: 784-200-200-50 encoder and 50-200-200-784 decoder, tanh,
diagonal-normal guide, Bernoulli likelihood; Adam 1e-3, batch 100, seed 0, no warm-up, the same
number of epochs (so the same number of gradient steps) for every objective. Each run keeps its
best-validation-ELBO checkpoint (single-draw ELBO on ``train.valid_limit`` validation images),
scored by importance sampling with K = 5000 on ``eval.limit`` = 1000 test images spread evenly
over the test split: the test ELBO (mean of the 5000 log-weights, a precise ELBO) and log p̂(x)
(IWAE_5000), and the per-image differences to the first run (paired: the images are shared).
Time per epoch is the mean over epochs of the training loop's wall time (validation excluded).

Then the gradient SNR against K for IWAE vs DReG at one trained checkpoint (``--snr-run``):
``--snr-draws`` gradient draws per K on a fixed batch of ``--snr-batch`` training images
(:func:`vaelab.inference.diagnostics.diagnose`), encoder and decoder, plotted on log-log axes
with the 1/√K slope Rainforth et al. (2018) predict for the IWAE encoder.

Writes ``estimators.md`` (tables, budget, command), ``estimators.json`` and
``estimators_snr.png`` into ``--out``.

::

    python experiments/compare_estimators.py                       # the committed table (~2 h)
    python experiments/compare_estimators.py --epochs 50 --test-limit 2000
    python experiments/compare_estimators.py --smoke --out /tmp/e   # seconds, synthetic data

For scale, fully trained (3280 epochs) Burda et al. report test log-likelihoods near −86.76 (IWAE,
K = 50) and −88.7 (VAE, K = 1) nats with this architecture; a 10-epoch budget is far from that.

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
  2. G. Tucker, D. Lawson, S. Gu, C. Maddison. *Doubly Reparameterized Gradient Estimators for
     Monte Carlo Objectives*. ICLR 2019.
  3. G. Roeder, Y. Wu, D. Duvenaud. *Sticking the Landing*. NeurIPS 2017.
  4. T. Rainforth et al. *Tighter Variational Bounds are Not Necessarily Better*. ICML 2018.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import Experiment, arch, parser  # noqa: E402

#: run name → objective overrides
OBJECTIVES = {
    "trace": ["objective.name=trace"],
    "mean_field": ["objective.name=mean_field"],
    "stl": ["objective.name=stl"],
    "iwae_k5": ["objective.name=iwae", "objective.num_particles=5"],
    "iwae_dreg_k5": ["objective.name=iwae_dreg", "objective.num_particles=5"],
    "iwae_k50": ["objective.name=iwae", "objective.num_particles=50"],
    "iwae_dreg_k50": ["objective.name=iwae_dreg", "objective.num_particles=50"],
}
#: the one architecture, budget and scoring (Burda et al. 2016's one-stochastic-layer model)
BASE = [
    "data.name=binarized_mnist",
    "model.latent_dim=50",
    "model.hidden_sizes=[200, 200]",
    "model.activation=tanh",
    "model.likelihood=bernoulli",
    "model.prior=standard_normal",
    "guide.family=normal",
    "train.epochs=10",
    "train.batch_size=100",
    "train.lr=1e-3",
    "train.seed=0",
    "train.valid_limit=2000",
    "eval.num_samples=5000",
    "eval.limit=1000",
    "eval.exact=false",
]
SMOKE = [
    "data.name=synthetic", "model.latent_dim=4", "model.hidden_sizes=[32]", "train.epochs=1",
    "train.max_steps_per_epoch=5", "train.valid_limit=50",
]


def parse_args(argv):
    p = parser(__doc__, runs="runs/compare_estimators")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    p.add_argument("--snr-run", default="trace", help="run whose checkpoint the SNR plot uses")
    p.add_argument("--snr-ks", default="1,3,10,30,100", help="K values of the SNR plot")
    p.add_argument("--snr-draws", type=int, default=None, help="gradient draws per K (100)")
    p.add_argument("--snr-batch", type=int, default=None, help="training images (100)")
    p.add_argument("--skip-snr", action="store_true")
    return p.parse_args(argv)


def run_objective(exp: Experiment, name: str):
    """Train one objective (or reuse its run), then score it by IS on the test subset."""
    overrides = [*BASE, *OBJECTIVES[name]]
    if exp.args.smoke:
        overrides = [o.replace("num_particles=50", "num_particles=3") for o in overrides]
    run = exp.train(name, exp.config(None, overrides, smoke=SMOKE))
    history = exp.history(run)
    est = exp.score(run)
    s = est.summary()
    cfg = run.cfg
    row = {
        "run": name, "objective": cfg.objective.name, "K_train": cfg.objective.num_particles,
        "arch": arch(run), "epochs": len(history), "steps": history[-1]["step"],
        "best_epoch": run.epoch + 1, "valid_limit": cfg.train.valid_limit,
        "best_valid_elbo": max(r["valid_elbo"] for r in history),
        "test_elbo": s["elbo"], "test_elbo_se": s["elbo_stderr"],
        "test_log_px": s["log_likelihood"], "test_log_px_se": s["log_likelihood_stderr"],
        "mc_stderr": s["mc_stderr_mean"], "ess_mean": s["ess_mean"], "K": est.num_samples,
        "n_test": s["num_points"],
        "epoch_time_s": sum(r["epoch_time"] for r in history) / len(history),
        "eval_s": est.extra["eval_s"],
        # per test image, for the paired differences (left out of the JSON)
        "_log_px": est.log_px.double(), "_elbo": est.elbo.double(),
    }
    return row, run


def paired(rows: list[dict]) -> None:
    """``row["paired"]``: mean ± s.e. of the per-image differences to ``rows[0]``."""
    ref = rows[0]
    for r in rows[1:]:
        r["paired"] = {}
        for key in ("elbo", "log_px"):
            d = r[f"_{key}"] - ref[f"_{key}"]
            r["paired"][key] = [float(d.mean()), float(d.std() / d.numel() ** 0.5)]


def snr_curves(args, run) -> dict:
    """IWAE vs DReG gradient statistics against K at the ``--snr-run`` checkpoint ``run``."""
    import pyro

    from vaelab.inference.diagnostics import diagnose

    B = args.snr_batch or (16 if args.smoke else 100)
    M = args.snr_draws or (4 if args.smoke else 100)
    ks = [int(k) for k in args.snr_ks.split(",")] if not args.smoke else [1, 3]
    x = run.pre.eval_split(run.split("train", B), 0)  # a fixed batch, spread over the split
    specs = [f"{name}:{k}" for name in ("iwae", "iwae_dreg") for k in ks]
    with pyro.validation_enabled(False):
        results = diagnose(run.vae, x, specs, draws=M, seed=0)
    return {
        "run": args.snr_run, "epoch": run.epoch + 1, "batch": B, "draws": M, "ks": ks,
        "results": [r.to_dict() for r in results],
    }


def plot_snr(snr: dict, path: Path) -> Path:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = snr["ks"]
    by = {(r["objective"]["name"], r["objective"]["num_particles"]): r for r in snr["results"]}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    # Rainforth et al. (2018): IWAE encoder SNR ∝ 1/√K, decoder SNR ∝ √K
    for ax, group, power in zip(axes, ("encoder", "decoder"), (-0.5, 0.5)):
        for name, label, style, mfc in (
            ("iwae", "IWAE", "o-", None), ("iwae_dreg", "DReG", "s--", "none"),
        ):
            ys = [by[(name, k)]["groups"][group]["snr"] for k in ks]
            ax.plot(ks, ys, style, label=label, mfc=mfc, ms=7 if mfc else 5)
        y0 = by[("iwae", ks[0])]["groups"][group]["snr"]
        ref = [y0 * (k / ks[0]) ** power for k in ks]
        ax.plot(ks, ref, "k:", lw=1, label=r"$\propto K^{%+.1f}$" % power)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("K (particles)")
        ax.set_title(f"{group} gradient SNR")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"mean$_p$ $|\mathrm{E}\,g_p| / \mathrm{sd}(g_p)$")
    axes[1].text(0.02, 0.02, "decoder: same estimator for both (curves coincide)",
                 transform=axes[1].transAxes, fontsize=7)
    fig.suptitle(
        f"IWAE vs DReG at the '{snr['run']}' checkpoint (epoch {snr['epoch']}), "
        f"{snr['draws']} draws, batch {snr['batch']}", fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


LABELS = {"trace": "`trace` (Trace_ELBO)", "mean_field": "`mean_field` (analytic KL)"}


def label(r: dict) -> str:
    if r["objective"] in ("iwae", "iwae_dreg"):
        return f"`{r['objective']}` K={r['K_train']}"
    return LABELS.get(r["objective"], f"`{r['objective']}`")


def table(rows: list[dict], saved: dict) -> list[str]:
    snr = saved.get("snr")
    data = "synthetic (smoke)" if saved.get("smoke") else "statically binarized MNIST (Larochelle)"
    r0 = rows[0]
    lines = [
        "# ELBO estimators: trace, mean_field, stl, IWAE and DReG",
        "",
        f"Data: {data}. Architecture (all runs): {r0['arch']} encoder, mirrored decoder, tanh, "
        "diagonal-normal guide, standard normal prior, Bernoulli likelihood (Burda et al. 2016's "
        "one-stochastic-layer model); Adam lr 1e-3, batch 100, seed 0, no KL warm-up, 1 CPU "
        "thread on a shared 2-core machine (times are noisy: other jobs ran concurrently).",
        "",
        f"**Budget**: the same number of gradient steps for every objective: {r0['epochs']} "
        f"epochs = {r0['steps']} steps of 100 images (the K = 50 runs see 50× the particles "
        "per step, at the cost in the last column). Checkpoint with the best single-draw ELBO on "
        f"{r0['valid_limit']} validation images. Test metrics on {r0['n_test']} test images "
        "spread evenly over the test split (the file is not shuffled and its first 1000 images "
        f"are denser) with K = {r0['K']} importance samples per image (nats per image, ± "
        "standard error across images): test ELBO = mean of the log-weights, log p̂ = IWAE_K. "
        "Time per epoch: training loop only (validation excluded).",
        "",
        "| objective | train K | best epoch | test ELBO | test log p̂(x) (IS) | log p̂ − ELBO "
        "| MC s.e. | mean ESS | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {label(r)} | {r['K_train']} | {r['best_epoch']} "
            f"| {r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f} "
            f"| **{r['test_log_px']:.2f}** ± {r['test_log_px_se']:.2f} "
            f"| {r['test_log_px'] - r['test_elbo']:.2f} | {r['mc_stderr']:.3f} "
            f"| {r['ess_mean']:.0f} | {r['epoch_time_s']:.1f} |"
        )
    if all("paired" in r for r in rows[1:]) and len(rows) > 1:
        lines += [
            "",
            "The ± above are standard errors across test images. Every run is scored on the "
            "same images, so differences between runs are measured per image (paired), against "
            f"{label(rows[0])}:",
            "",
            "| objective | Δ test ELBO (paired) | Δ test log p̂ (paired) |",
            "|---|---|---|",
        ]
        for r in rows[1:]:
            (de, se_e), (dl, se_l) = r["paired"]["elbo"], r["paired"]["log_px"]
            lines.append(f"| {label(r)} | {de:+.2f} ± {se_e:.2f} | {dl:+.2f} ± {se_l:.2f} |")
    lines.append("")
    if snr is not None:
        lines += [
            "## Gradient signal-to-noise ratio against K (IWAE vs DReG)",
            "",
            f"At the `{snr['run']}` checkpoint (epoch {snr['epoch']}), a fixed batch of "
            f"{snr['batch']} training images, {snr['draws']} gradient draws per K "
            "(`vaelab.inference.diagnostics`): snr = mean over coordinates of |E g_p| / sd(g_p) "
            "(Rainforth et al. 2018), variance = mean over coordinates of Var g_p, of the "
            "gradient of the batch-mean negative bound. Plot: "
            "[estimators_snr.png](estimators_snr.png).",
            "",
            "| objective | K | bound (mean ± sd) | encoder snr | encoder var | decoder snr "
            "| decoder var | ms / step |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in snr["results"]:
            e, d = r["groups"]["encoder"], r["groups"]["decoder"]
            lines.append(
                f"| `{r['objective']['name']}` | {r['objective']['num_particles']} "
                f"| {r['bound_mean']:.2f} ± {r['bound_sd']:.2f} | {e['snr']:.3f} "
                f"| {e['variance']:.3g} | {d['snr']:.3f} | {d['variance']:.3g} "
                f"| {r['time_per_step_ms']:.0f} |"
            )
        by = {(r["objective"]["name"], r["objective"]["num_particles"]): r for r in snr["results"]}
        k0, k1 = snr["ks"][0], snr["ks"][-1]

        def ratio(name: str, group: str) -> str:
            a = by[(name, k0)]["groups"][group]["snr"]
            b = by[(name, k1)]["groups"][group]["snr"]
            return f"{a:.3g} → {b:.3g} (×{b / a:.2f})"

        lines += [
            "",
            f"Measured from K = {k0} to K = {k1}: encoder snr IWAE {ratio('iwae', 'encoder')}, "
            f"DReG {ratio('iwae_dreg', 'encoder')}; decoder snr (the same estimator for both) "
            f"{ratio('iwae', 'decoder')}. The asymptotic rates of Rainforth et al. (2018) are "
            f"×{(k0 / k1) ** 0.5:.2f} (1/√K) for the IWAE encoder and ×{(k1 / k0) ** 0.5:.1f} (√K) "
            "for the decoder; they hold once K is large enough for the self-normalized weights to "
            "be nearly uniform, which the test ESS column above (mean ESS over K = 5000 weights) "
            "says this checkpoint is far from. The same comparison on the linear-Gaussian model "
            "(`tests/inference/test_diagnostics.py::test_snr_scaling_iwae_falls_dreg_does_not`, "
            "weights "
            "close to uniform) shows the predicted behaviour: IWAE encoder snr 0.58 → 0.08, DReG "
            "0.99 → 3.1 from K = 1 to 100.",
            "",
            f"Noise floor of snr with {snr['draws']} draws: a zero-mean coordinate still shows "
            f"≈ √(2/(π·{snr['draws']})) = {math.sqrt(2 / (math.pi * snr['draws'])):.3f}.",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with Experiment("estimators", args, argv, "experiments/compare_estimators.py") as exp:
        if args.table_only:
            return exp.rewrite(table)
        rows, runs = [], {}
        for name in args.objectives:
            row, runs[name] = run_objective(exp, name)
            rows.append(row)
            paired(rows)
            print({k: v for k, v in row.items() if k[0] != "_"}, flush=True)
            exp.write(table(rows, {"smoke": args.smoke}), rows, smoke=args.smoke)
        snr = None
        if not args.skip_snr and args.snr_run in runs:
            snr = snr_curves(args, runs[args.snr_run])
            plot_snr(snr, exp.png("snr"))
        path = exp.write(table(rows, {"smoke": args.smoke, "snr": snr}), rows,
                         smoke=args.smoke, snr=snr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
