"""Data-parallel training and sharded evaluation (vaelab.runs.world, .data_parallel, .sharded;
vaelab.inference.noise), on CPU with gloo.

Multi-process tests start 2 real processes with ``torch.multiprocessing`` (spawn), each given
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` on a
free port), or run ``torchrun --standalone`` itself. The 1-process reference runs here, with
``train.per_point_noise = true``: the same per-point draws.

Tolerances (float32; the 2-process gradient is the sum of two half-batch gradients, one process
sums the whole batch inside its matrix products, so the two differ by summation order only):
gradients of one step to ``rtol = 1e-5`` plus ``atol = 1e-6`` (measured: max |Δ| 1.9e-6 on
gradients up to 23.5); parameters after 20 Adam steps and after whole runs to ``atol = 1e-6``
(measured: 3e-8 after 20 steps); losses and metrics to ``rtol = 1e-5`` (measured: 1.8e-7).
Sharded evaluation is compared exactly (``torch.equal``): the same blocks, the same seeds, the
same arithmetic.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from vaelab.data import Preprocessor, load_dataset
from vaelab.inference.noise import PointNoise, block_seed, point_generators
from vaelab.registry import ConfigError
from vaelab.resolve import load_config
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.runs.data_parallel import DataParallel, GlobalBatch, data_parallel
from vaelab.runs.run import eval_config, evaluate, load_run
from vaelab.runs.sharded import bdmc_sharded, evaluate_sharded
from vaelab.runs.stepper import Stepper
from vaelab.runs.train import choose_objective, train
from vaelab.runs.world import World, leave, score_blocks, share
from vaelab.seed import seed_all
from vaelab.vae import build_vae

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
BASE = [
    "data.name=synthetic",
    "model.latent_dim=3",
    "model.hidden_sizes=[16]",
    "train.batch_size=31",  # 400 points: 12 batches of 31 (shares 15/16) and one of 28
    "train.progress=false",
    "train.pyro_validation=true",
    "train.lr=3e-3",
    "train.per_point_noise=true",
    "eval.num_samples=20",
]
GRAD_TOL = {"rtol": 1e-5, "atol": 1e-6}
PARAM_TOL = {"rtol": 0.0, "atol": 1e-6}


def _cfg(*extra):
    return load_config(None, [*BASE, *extra])


def _params(vae) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


# --------------------------------------------------------------------------------------------
# processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, size: int, port: int, fn, args) -> None:
    """A spawned process: torchrun's environment, one thread, then ``fn(rank, *args)``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank), VAELAB_OFFLINE="1")
    torch.set_num_threads(1)
    pyro.enable_validation(True)
    try:
        fn(rank, *args)
    except BaseException:
        leave()
        raise
    leave(synchronize=True)


def _spawn(fn, *args, nprocs: int = 2) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` fresh processes of one gloo group; raises if any
    fails."""
    torch.multiprocessing.start_processes(_entry, args=(nprocs, _free_port(), fn, args),
                                          nprocs=nprocs, join=True, start_method="spawn")


def _record_writes(folder: Path, log: list) -> None:
    """Audit every write of this process under ``folder``: opens for writing, renames, links,
    removals, new folders (Python audit events; the hook stays for the process's life)."""
    root = str(folder)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def under(a) -> bool:
        return isinstance(a, (str, os.PathLike)) and os.fspath(a).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and under(args[0]):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (flags or 0) & write_flags:
                log.append(("open", os.fspath(args[0])))
        elif event in ("os.rename", "os.link", "os.remove", "os.rmdir", "os.mkdir",
                       "os.truncate", "os.symlink") and any(under(a) for a in args):
            log.append((event, [os.fspath(a) for a in args if under(a)]))

    sys.addaudithook(hook)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------
# one process: shares, per-point draws, the gradient identity


def test_shares_cover_every_item_once_without_padding():
    for n in [0, 1, 2, 3, 7, 31, 100]:
        for size in [1, 2, 3, 4]:
            parts = [list(range(n))[share(n, World(r, size))] for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n)), (n, size)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1, (n, size)


def test_score_blocks_in_one_process_is_every_block_in_order():
    got = score_blocks(lambda b, s: (b, s.start, s.stop), 23, 5, World())
    assert got == [(0, 0, 5), (1, 5, 10), (2, 10, 15), (3, 15, 20), (4, 20, 23)]


@pytest.mark.parametrize("family", ["normal", "iaf", "relaxed"])
def test_a_point_gets_the_same_draw_in_any_batch(family):
    """Point 5's z is the same drawn alone, first or last of a batch, under a particle plate
    (PointNoise keys it by the point, not by its position): the same noise, and the encoder's
    output equal up to the rounding of matrix products of another batch size (1e-5; another
    draw would differ by O(1))."""
    extra = ["model.latent=categorical", "model.latent_dim=2"] if family == "relaxed" else []
    cfg = load_config(None, [*BASE, f"guide.family={family}", *extra])
    data = load_dataset(cfg.data)
    vae = build_vae(cfg, data.train.shape[1], data.shape)
    x = data.train[:8]

    def z_of(order: list[int], particles: int = 1) -> torch.Tensor:
        idx = torch.tensor(order)
        with PointNoise(point_generators(0, 3, idx, 7)), \
                pyro.plate("particles", particles, dim=-2):  # the noise outside every plate
            z = vae.guide(x[idx])  # (K, B, *event); (B, *event) for K = 1
        return z.reshape(particles, len(order), -1)[:, order.index(5)]  # (K, event size)

    alone = z_of([5])
    torch.testing.assert_close(z_of([1, 5, 2]), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_of([3, 4, 6, 0, 5]), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_of([5, 0], particles=4), z_of([2, 5], particles=4),
                               rtol=1e-5, atol=1e-5)
    with PointNoise(point_generators(0, 3, torch.tensor([4, 5]), 7)):
        twice = vae.guide(x[[5, 5]])  # the same data under two keys: two different draws
    assert not torch.equal(twice[0], twice[1])


def test_per_point_noise_refuses_a_family_it_cannot_key():
    cfg = load_config(None, [*BASE, "guide.family=student_t"])
    data = load_dataset(cfg.data)
    vae = build_vae(cfg, data.train.shape[1], data.shape)
    with PointNoise(point_generators(0, 0, torch.arange(4), 7)), \
            pytest.raises(ConfigError, match="StudentT.*normal, iaf and relaxed"):
        vae.guide(data.train[:4])


def test_one_process_without_per_point_noise_is_the_default_loop():
    assert data_parallel(load_config(None, [*BASE, "train.per_point_noise=auto"]), CPU) is None
    assert isinstance(data_parallel(_cfg(), CPU), DataParallel)


def test_per_point_draws_never_compile(capsys):
    """A compiled graph would bake the draws in: ``auto`` is eager with one note, ``true`` is
    refused (with several processes, build_objective's note says the same, tested above)."""
    parallel = data_parallel(_cfg(), CPU)
    assert parallel.objective_config(_cfg().objective).jit is False
    assert capsys.readouterr().err.count("eager, train.per_point_noise draws") == 1
    with pytest.raises(ConfigError, match="objective.jit = true"):
        parallel.objective_config(_cfg("objective.jit=true").objective)


def _setup(cfg):
    """The VAE, data, preprocessor and stepper of ``cfg``, built as train() builds them."""
    pyro.clear_param_store()
    seed_all(cfg.train.seed)
    data = load_dataset(cfg.data)
    pre = Preprocessor(cfg.data, data)
    vae = build_vae(cfg, data.train.shape[1], data.shape)
    parallel = data_parallel(cfg, CPU)
    objective, eager = choose_objective(cfg, vae, data, pre, parallel)
    return vae, data, pre, Stepper(cfg.train, vae, objective, eager, parallel)


def _grads(vae) -> dict[str, torch.Tensor]:
    out = {k: p.grad.clone() for k, p in vae.named_parameters()}
    for p in vae.parameters():
        p.grad = None
    return out


def test_the_batch_gradient_is_the_sum_of_the_shares_gradients(tmp_path):
    """In one process: the gradient of a batch equals the sum of the gradients of its two
    halves scored as batches of their own (what two processes all-reduce), dynamic
    binarization included (grey-level data: each point binarized by its own generator)."""
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, size=(120, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", train=levels[:80], valid=levels[80:100], test=levels[100:])
    cfg = _cfg("data.name=array", f"data.path={str(tmp_path / 'grey.npz')!r}",
               "data.binarize=dynamic", "train.batch_size=30")
    vae, data, pre, stepper = _setup(cfg)
    parallel = stepper.parallel
    x, batch = next(stepper.batches(data.train, pre, 0, CPU))
    assert x.shape == (30, 64) and set(x.unique().tolist()) == {0.0, 1.0}
    parallel.loss_and_grads(x, 1.0, None, batch)
    whole = _grads(vae)
    halves = []
    for part in (slice(0, 13), slice(13, 30)):  # uneven, as with an odd batch
        half = GlobalBatch(0, batch.idx[part])
        halves.append(parallel.loss_and_grads(x[part], 1.0, None, half))
        halves.append(_grads(vae))
    for k, g in whole.items():
        torch.testing.assert_close(halves[1][k] + halves[3][k], g, **GRAD_TOL)


# --------------------------------------------------------------------------------------------
# two processes


def _steps_worker(rank: int, out: Path, overrides: list[str], steps: int) -> None:
    cfg = _cfg(*overrides)
    vae, data, pre, stepper = _setup(cfg)
    result = _run_steps(vae, data, pre, stepper, steps)
    if rank == 0:
        torch.save(result, out)


def _run_steps(vae, data, pre, stepper: Stepper, steps: int) -> dict:
    """The gradient of the first global batch (no update), then ``steps`` Adam steps."""
    batches = stepper.batches(data.train, pre, 0, CPU)
    x, batch = next(batches)
    loss = stepper.parallel.loss_and_grads(x, 1.0, None, batch)
    grads = _grads(vae)
    losses, read, epoch = [], [], 0
    while len(losses) < steps:
        for x, batch in stepper.batches(data.train, pre, epoch, CPU):
            value = stepper.step(x, 1.0, None, batch)[0]
            losses.append(float(value))
            read.append(isinstance(value, float))  # read back (a tensor: left on the device)
            if len(losses) == steps:
                break
        epoch += 1
    return {"loss": loss, "grads": grads, "losses": losses, "read": read,
            "params": _params(vae)}


@pytest.mark.slow
@pytest.mark.parametrize("sync_every", [1, 6])
def test_two_processes_step_like_one(tmp_path, sync_every):
    """The same global batch and per-point draws: the all-reduced gradient of 2 processes is
    the 1-process gradient; after 20 steps the parameters agree. 400 = 7 × 57 + 1: shares of 28
    and 29 points, and a last batch of 1 whose rank-0 share is empty (it joins the all-reduce
    with weight 0), twice, across two new epochs. With ``train.sync_every = 6`` the 2 processes
    read the loss back (with the stop requests) at steps 6, 12, 18 only, and match the
    1-process run that reads every step."""
    overrides = ["train.batch_size=57"]
    _spawn(_steps_worker, tmp_path / "two.pt", [*overrides, f"train.sync_every={sync_every}"],
           20)
    two = torch.load(tmp_path / "two.pt")
    one = _run_steps(*_setup(_cfg(*overrides)), 20)
    assert two["read"] == [step % sync_every == 0 for step in range(1, 21)]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    for k, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][k], g, **GRAD_TOL)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    for k, p in one["params"].items():
        torch.testing.assert_close(two["params"][k], p, **PARAM_TOL)


def _train_worker(rank: int, jobs: list[tuple[str, list[str], bool]], log: Path) -> None:
    """``train(...)`` for each (folder, overrides, resume), recording this process's writes
    in the folders into ``log.RANK``."""
    writes: list = []
    for folder, _, _ in jobs:
        _record_writes(Path(folder), writes)
    for folder, overrides, resume in jobs:
        train(_cfg(*overrides), folder, resume=resume)
    Path(f"{log}.{rank}").write_text(json.dumps(writes))


def _writes(log: Path) -> tuple[list, list]:
    """What rank 0 and rank 1 wrote in the run folders (:func:`_train_worker`)."""
    return json.loads(Path(f"{log}.0").read_text()), json.loads(Path(f"{log}.1").read_text())


def _rows(folder: Path) -> list[dict]:
    return [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]


def _same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same run: the same metrics (to rtol 1e-5, timings aside) and
    last parameters (to PARAM_TOL)."""
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for key in ("train_loss", "valid_elbo"):
        assert [r[key] for r in ra] == pytest.approx([r[key] for r in rb], rel=1e-5), key
    pa = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    pb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], **PARAM_TOL)


@pytest.mark.slow
def test_two_process_runs_match_and_resume_across_world_sizes(tmp_path):
    """2 epochs on 2 processes = 2 epochs on 1; a 2-process epoch resumed by 1 process, and a
    1-process epoch resumed by 2, continue to the same result; rank 1 wrote nothing."""
    two, two_half, one, one_half = (tmp_path / n for n in ("two", "two_half", "one", "one_half"))
    log = tmp_path / "rank1_writes.json"
    _spawn(_train_worker, [(str(two), ["train.epochs=2"], False),
                           (str(two_half), ["train.epochs=1"], False)], log)
    main, other = _writes(log)
    assert other == [] and any(e == "os.rename" for e, _ in main), "rank 0 alone wrote"
    train(_cfg("train.epochs=2"), one)
    train(_cfg("train.epochs=1"), one_half)
    assert _files(two) == _files(one), "the same files, no partial ones"
    _same_run(two, one)

    untimed = [{k: v for k, v in r.items() if k != "epoch_time"} for r in _rows(two)]
    assert [{k: v for k, v in r.items() if k != "epoch_time"} for r in _rows(two_half)] \
        == untimed[:1], "2 processes are deterministic: the same epoch 1, bit for bit"

    before = _rows(two_half)
    train(_cfg("train.epochs=2"), two_half, resume=True)  # 2 processes, then 1
    assert _rows(two_half)[:1] == before, "the committed epoch is kept as it was"
    _same_run(two_half, one)
    before = _rows(one_half)
    _spawn(_train_worker, [(str(one_half), ["train.epochs=2"], True)], log)  # 1, then 2
    main, other = _writes(log)
    assert other == [] and main
    assert _rows(one_half)[:1] == before
    _same_run(one_half, one)
    assert not [f for f in _files(one_half) if f.endswith(".tmp")]


def _bdmc(run) -> dict:
    """BDMC bounds of 7 simulated points in blocks of 3 (3 AIS steps, 2 chains)."""
    model, guide = run.vae.eval_pair()
    x_like = torch.zeros(7, run.data.train.shape[1])
    with pyro.validation_enabled(False):
        r = bdmc_sharded(model, guide, x_like, seed=3, block=3, num_steps=3, num_chains=2,
                         batch_size=3)
    return vars(r)


def _eval_worker(rank: int, run_dir: str, overrides: list[str], out: Path) -> None:
    run = load_run(run_dir)
    ests = [vars(evaluate_sharded(run, eval_config(run.cfg, o))) for o in overrides]
    if rank == 0:
        torch.save([*ests, _bdmc(run)], out)
    else:
        _bdmc(run)


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process_per_point(tmp_path):
    """41 points in blocks of 10 over 2 processes (blocks 0-1 and 2-4: 20 and 21 points): per
    point exactly what one process gives for the same blocks and seeds, IS and AIS; BDMC on 7
    simulated points in blocks of 3 likewise."""
    train(_cfg("train.epochs=1", "train.per_point_noise=auto"), tmp_path / "r")
    overrides = [["eval.limit=41", "eval.block_size=10"],
                 ["eval.limit=41", "eval.block_size=10", "eval.method=ais", "eval.ais_steps=5",
                  "eval.ais_chains=3"]]
    _spawn(_eval_worker, str(tmp_path / "r"), overrides, tmp_path / "est.pt")
    *sharded, bounds = torch.load(tmp_path / "est.pt")
    run = load_run(tmp_path / "r")
    want_bounds = _bdmc(run)
    for key in ("lower", "upper", "x", "z"):
        assert bounds[key].shape[0] == 7 and torch.equal(bounds[key], want_bounds[key]), key
    for o, got in zip(overrides, sharded):
        want = evaluate_sharded(run, eval_config(run.cfg, o))
        assert got["log_px"].shape == (41,)
        for key in ("log_px", "elbo", "ess", "pareto_k"):
            if getattr(want, key) is not None:
                assert torch.equal(got[key], getattr(want, key)), (o, key)
        # and each block is vaelab.runs.run.evaluate of its points, seeded by (eval.seed, block)
        ec = eval_config(run.cfg, o)
        third = evaluate(run, ec, points=slice(20, 30), seed=block_seed(ec.seed, 2))
        assert torch.equal(got["log_px"][20:30], third.log_px)


#: ``vaelab reproduce`` on a tiny budget: IS on the 100 test points in blocks of 20 (5 blocks:
#: rounds of 2, 2, 1), AIS on 70 (4 blocks), BDMC on 5 simulated points, the relaxed-sample
#: figure on the 100 images (5 blocks)
REPRODUCE = ["data.name=synthetic", "data.limit=300", "train.epochs=1",
             "train.max_steps_per_epoch=2", "train.valid_limit=50", "train.progress=false",
             "eval.limit=100", "eval.num_samples=20", "eval.block_size=20",
             "recipe.ais.points=70", "recipe.ais.steps=3", "recipe.ais.chains=2",
             "recipe.ais.leapfrog=2", "recipe.bdmc.points=5", "recipe.bdmc.steps=3",
             "recipe.bdmc.chains=2", "recipe.bdmc.leapfrog=2"]
#: (recipe, variant, its own overrides): the temperature falls at every step, so that the
#: metric's τ (the best checkpoint's) tells the epochs apart
RECIPES = [("iwae_static", "iwae_k1", []),
           ("gumbel_softmax", "gumbel", ["train.epochs=2", "model.latent.anneal_every=1",
                                         "model.latent.anneal_rate=0.1"])]


def _reproduce_worker(rank: int, root: str, log: Path) -> None:
    """``reproduce`` of each of :data:`RECIPES` under ``root``, recording this process's writes
    there into ``log.RANK`` and the first point of each block it scored into ``log.RANK.scored``
    (``vaelab.runs.run.evaluate``, which ``reproduce`` calls per block, wrapped)."""
    import vaelab.runs.run
    from vaelab.runs.reproduce import reproduce

    writes: list = []
    _record_writes(Path(root), writes)
    scored, evaluate_block = [], vaelab.runs.run.evaluate

    def counted(run, ec, **kwargs):
        scored.append([ec.method, kwargs["points"].start])
        return evaluate_block(run, ec, **kwargs)

    vaelab.runs.run.evaluate = counted
    for recipe, variant, extra in RECIPES:
        reproduce(recipe, Path(root) / recipe, variants=[variant], overrides=REPRODUCE + extra)
    Path(f"{log}.{rank}").write_text(json.dumps(writes))
    Path(f"{log}.{rank}.scored").write_text(json.dumps(scored))


def _scored(log: Path) -> tuple[list, list]:
    """The blocks rank 0 and rank 1 scored (:func:`_reproduce_worker`)."""
    return (json.loads(Path(f"{log}.0.scored").read_text()),
            json.loads(Path(f"{log}.1.scored").read_text()))


def _result(root: Path, recipe: str) -> tuple[Path, dict]:
    path = next((root / recipe).glob("*/seed*/reproduce/result.json"))
    return path.parent, json.loads(path.read_text())


def _blocks(folder: Path) -> torch.Tensor:
    """The per-point log p̂(x) of a resumable evaluation's saved blocks, in order."""
    return torch.cat([load_checkpoint(p)["estimate"]["log_px"]
                      for p in sorted(folder.glob("block_*.pt"))])


@pytest.mark.slow
def test_reproduce_on_two_processes_gives_the_one_process_numbers_and_resumes(tmp_path):
    """Trained and evaluated by ``reproduce`` in one process, then evaluated again from the same
    trained runs by ``reproduce`` on 2 processes: the IS and AIS blocks, point by point, and the
    stages built on them (AIS − IS) and the relaxed-sample figure (one process with
    ``eval.block_size`` scores the same blocks) exactly equal; BDMC exactly what one process
    gives for the blocks a torchrun job scores; rank 1 wrote nothing. Then a crash is simulated
    (one IS block and the stage summaries lost): the 2 processes recompute that block alone and
    reach the same numbers."""
    import shutil

    from vaelab.inference.relaxed_bound import jang_bound
    from vaelab.runs.reproduce import reproduce

    one, two, log = tmp_path / "one", tmp_path / "two", tmp_path / "writes"
    for recipe, variant, extra in RECIPES:
        reproduce(recipe, one / recipe, variants=[variant], overrides=REPRODUCE + extra)
    shutil.copytree(one, two)
    for folder in [*two.glob("*/*/seed*/reproduce"), *two.glob("*/reproduce.md")]:
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    _spawn(_reproduce_worker, str(two), log)
    main_writes, other_writes = _writes(log)
    assert other_writes == [] and main_writes
    # rounds of one block per process: IS blocks 0-4 as (0, 1), (2, 3), (4), then (iwae only)
    # AIS blocks 0-3 as (0, 1), (2, 3); the first point of each block
    is0, is1 = [["is", 0], ["is", 40], ["is", 80]], [["is", 20], ["is", 60]]
    assert _scored(log) == (is0 + [["ais", 0], ["ais", 40]] + is0,
                            is1 + [["ais", 20], ["ais", 60]] + is1)

    (eval_one, iw_one), (eval_two, iw_two) = _result(one, "iwae_static"), _result(two,
                                                                                  "iwae_static")
    for stage in ("is", "ais"):
        assert torch.equal(_blocks(eval_two / stage), _blocks(eval_one / stage)), stage
        assert iw_two[stage]["log_likelihood"] == iw_one[stage]["log_likelihood"], stage
    assert _blocks(eval_two / "is").shape == (100,) and len(list((eval_two / "is").iterdir())) == 5
    for key in ("mean", "stderr", "frac_ais_higher", "num_points"):
        assert iw_two["ais_vs_is"][key] == iw_one["ais_vs_is"][key], key
    assert iw_two["machine"].endswith("× 2 processes")
    assert "× 2 processes" in (two / "iwae_static" / "reproduce.md").read_text()

    # BDMC: one block of 5 points (blocks of eval batch size 100 under torchrun), seeded by
    # (eval.seed, 0); Jang: blocks of eval.block_size images, block b seeded by (eval.seed, b)
    # with the fused log joint the recipes' BDMC stage uses (eval.fused)
    from vaelab.runs.run import fused_log_joint

    run = load_run(eval_two.parent)
    model, guide = run.vae.eval_pair()
    ec = run.cfg.eval.model_copy(update={"ais_chains": 2, "ais_base": "prior"})
    with pyro.validation_enabled(False):
        want = bdmc_sharded(model, guide, torch.zeros(5, run.data.train.shape[1]),
                            seed=run.cfg.eval.seed, block=100, num_steps=3, num_chains=2,
                            num_leapfrog=2, base="prior",
                            log_joint_for=fused_log_joint(run, ec)).summary()
    assert {k: iw_two["bdmc"][k] for k in want} == want
    gumbel_dir, gumbel = _result(two, "gumbel_softmax")
    run = load_run(gumbel_dir.parent)
    seed = run.cfg.eval.seed
    x = run.pre.eval_split(run.split("test", 100), seed)
    # the temperature at the evaluated (best) checkpoint's epoch
    best = max(_rows(gumbel_dir.parent), key=lambda r: r["valid_elbo"])
    tau = run.vae.latent.temperature_at(best["step"])
    assert gumbel["paper_metric"]["temperature"] == pytest.approx(float(tau), rel=1e-6)
    parts = []
    for b, start in enumerate(range(0, 100, 20)):
        seed_all(block_seed(seed, b))
        parts.append(jang_bound(run.vae, x[start : start + 20], tau, 1000))
    assert gumbel["paper_metric"]["jang_bound"] == float(torch.cat(parts).mean())
    gumbel_one = _result(one, "gumbel_softmax")[1]  # one process, eval.block_size: same blocks
    for stage, key in (("is", "log_likelihood"), ("paper_metric", "jang_bound")):
        assert gumbel[stage][key] == gumbel_one[stage][key], stage

    # the crash: block 2 of IS and the summaries built on it are gone
    for name in ("is/block_0002.pt", "is.json", "ais_vs_is.json", "result.json"):
        (eval_two / name).unlink()
    _spawn(_reproduce_worker, str(two), log)
    main_writes, other_writes = _writes(log)
    assert other_writes == [] and _scored(log) == ([["is", 40]], [])
    blocks_written = {Path(paths[-1]).name for event, paths in main_writes  # rename's target
                      if event == "os.rename" and Path(paths[-1]).parent.name == "is"}
    assert blocks_written == {"block_0002.pt"}, "only the lost block is recomputed"
    again = json.loads((eval_two / "result.json").read_text())
    assert torch.equal(_blocks(eval_two / "is"), _blocks(eval_one / "is"))
    assert again["is"]["log_likelihood"] == iw_one["is"]["log_likelihood"]
    assert again["ais_vs_is"]["mean"] == iw_one["ais_vs_is"]["mean"]


def _leave_worker(rank: int, log: Path, peer_gone: bool) -> None:
    """Rank 1 arrives late (1.5 s), or is gone (``peer_gone``: it exits at once, without
    leaving); each process records when it started and finished ``leave(synchronize=True)``."""
    import time

    from vaelab.runs.world import join

    join(CPU)
    if rank == 1:
        if peer_gone:
            os._exit(0)
        time.sleep(1.5)
    t0 = time.time()
    leave(synchronize=True)
    Path(f"{log}.{rank}").write_text(json.dumps([t0, time.time()]))


@pytest.mark.slow
def test_leaving_together_waits_for_the_late_process_and_not_for_a_gone_one(tmp_path):
    """``leave(synchronize=True)`` (a successful command's exit): the process that is done
    first does not tear the group down before the late one has arrived; a peer that has gone
    (exited without leaving) does not hold it for the barrier's 60 s."""
    log = tmp_path / "leave"
    _spawn(_leave_worker, log, False)
    (enter0, exit0), (enter1, _) = (json.loads(Path(f"{log}.{r}").read_text()) for r in (0, 1))
    assert exit0 >= enter1 > enter0 + 1.0
    _spawn(_leave_worker, tmp_path / "gone", True)
    enter0, exit0 = json.loads(Path(f"{tmp_path / 'gone'}.0").read_text())
    assert exit0 - enter0 < 30


# --------------------------------------------------------------------------------------------
# the command line under torchrun


def _torchrun(*args: str, nprocs: int = 2, env: dict | None = None, timeout: int = 300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nprocs}", "-m", "vaelab", *args]
    return _run(cmd, env, timeout)


def _vaelab(*args: str, env: dict | None = None, timeout: int = 300):
    return _run([sys.executable, "-m", "vaelab", *args], env, timeout)


def _run(cmd: list[str], env: dict | None, timeout: int):
    full = {**os.environ, "VAELAB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=timeout)


def _sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.slow
def test_torchrun_train_and_evaluate_from_the_command_line(tmp_path, empty_cfg):
    """``torchrun --nproc_per_node=2 -m vaelab train`` runs eager and says so once; its
    ``evaluate --json`` equals one process evaluating the same blocks."""
    out = tmp_path / "run"
    sets = _sets(*[o for o in BASE if "per_point" not in o], "train.epochs=1", "eval.limit=41",
                 "eval.batch_size=10")
    p = _torchrun("train", str(empty_cfg), "--out", str(out), *sets)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("objective.jit = 'auto': eager, 2 processes train") == 1, p.stderr
    assert "[rank 1]" not in p.stderr and "report:" in p.stdout
    assert (out / "checkpoints" / "last.pt").is_file() and len(_rows(out)) == 1

    p = _torchrun("evaluate", str(out), "--json", "--no-progress")
    assert p.returncode == 0, p.stderr
    sharded = json.loads(p.stdout)  # rank 0 alone prints
    p = _vaelab("evaluate", str(out), "--json", "--no-progress", "--set", "eval.block_size=10")
    assert p.returncode == 0, p.stderr
    assert sharded == json.loads(p.stdout)
    assert sharded["num_points"] == 41 and sharded["blocks"] == 5


@pytest.mark.slow
def test_killing_a_rank_stops_the_job_and_resume_continues(tmp_path, empty_cfg):
    """Rank 1 SIGKILLed at its 18th step (epoch 2 of 13-step epochs): the job stops with one
    clear line, the folder holds epoch 1 and nothing partial; a 1-process --resume ends where
    an uninterrupted run ends."""
    out = tmp_path / "run"
    sets = _sets(*BASE, "train.epochs=2")
    p = _torchrun("train", str(empty_cfg), "--out", str(out), *sets,
                  env={"VAELAB_FAULT": "rank1-step@18"})
    assert p.returncode != 0
    lines = [s for s in p.stderr.splitlines() if s.startswith("vaelab train")]
    assert len(lines) == 1 and "another process of this torchrun job stopped" in lines[0], \
        p.stderr
    assert f'File "{REPO / "vaelab"}' not in p.stderr, "no traceback from vaelab"
    assert len(_rows(out)) == 1 and not [f for f in _files(out) if f.endswith(".tmp")]
    p = _vaelab("train", str(out / "config.toml"), "--out", str(out), "--resume")
    assert p.returncode == 0, p.stderr
    train(_cfg("train.epochs=2"), tmp_path / "straight")
    _same_run(out, tmp_path / "straight")


# ---- issue 28, item 7: the same numbers on any number of processes, without flags ----------

def _default_eval_worker(rank: int, run_dir: str, out: Path) -> None:
    est = evaluate_sharded(load_run(run_dir))  # the run's own [eval]: no block size given
    if rank == 0:
        torch.save(vars(est), out)


@pytest.mark.slow
def test_one_and_two_processes_give_the_same_numbers_without_flags(tmp_path):
    """The run's own ``[eval]`` (41 points, ``eval.batch_size = 10``, no ``eval.block_size``):
    two processes and one give the same per-point log p(x), ELBO, ESS and k̂ (compared
    exactly: the same blocks of ``eval.batch_size`` points, block b seeded by (eval.seed, b)).
    Before, one process made one pass seeded by eval.seed and disagreed with torchrun."""
    train(_cfg("train.epochs=1", "eval.limit=41", "eval.batch_size=10"), tmp_path / "r")
    _spawn(_default_eval_worker, str(tmp_path / "r"), tmp_path / "two.pt")
    two = torch.load(tmp_path / "two.pt")
    one = evaluate_sharded(load_run(tmp_path / "r"))
    assert one.log_px.shape == (41,)
    for key in ("log_px", "elbo", "ess", "pareto_k"):
        assert torch.equal(two[key], getattr(one, key)), key
    assert two["extra"]["block_size"] == one.extra["block_size"] == 10
    assert one.extra["blocks"] == 5
