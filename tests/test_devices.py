"""GPU-readiness on the CPU: losses read back every ``train.sync_every`` steps (one host
synchronisation per window, the same parameters as reading every step), non-finite steps skipped
on the device, deterministic kernels switched on and off, and ``benchmarks/gpu.sh`` without a
GPU."""

import collections
import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

import vaelab.runs.train as train_module
from vaelab.devices import deterministic, resolve_device, run_device, to_device
from vaelab.inference.objectives import build_objective
from vaelab.resolve import load_config
from vaelab.runs.train import NonFiniteLossError, Stepper, train
from vaelab.vae import build_vae

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "data.name=synthetic",
    "model.latent_dim=3",
    "model.hidden_sizes=[16]",
    "train.batch_size=16",
    "train.progress=false",
    "train.epochs=2",
]
#: the methods through which a tensor's value reaches the host (each a device sync on a GPU)
READS = ("item", "__float__", "tolist", "__bool__")


def _cfg(*extra):
    return load_config(None, [*BASE, *extra])


def _params(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


class _CountReads:
    """Count calls of :data:`READS` on tensors inside ``train_epoch`` (the training steps)."""

    def __init__(self, monkeypatch):
        self.counts: collections.Counter = collections.Counter()
        real_epoch = train_module.train_epoch

        def counted(*args, **kwargs):
            saved = {n: getattr(torch.Tensor, n) for n in READS}
            for n, f in saved.items():
                setattr(torch.Tensor, n, self._wrap(n, f))
            try:
                return real_epoch(*args, **kwargs)
            finally:
                for n, f in saved.items():
                    setattr(torch.Tensor, n, f)

        monkeypatch.setattr(train_module, "train_epoch", counted)

    def _wrap(self, name, f):
        def read(tensor, *args, **kwargs):
            self.counts[name] += 1
            return f(tensor, *args, **kwargs)
        return read


@pytest.mark.parametrize("objective", ["trace", "iwae"])
def test_sync_every_reads_the_losses_once_per_window_to_the_same_result(tmp_path, monkeypatch,
                                                                         objective):
    """400 synthetic points at batch 16: 25 steps an epoch, 2 epochs. ``trace`` compiles
    (JitTrace_ELBO), ``iwae`` is vaelab's own particle objective: with ``sync_every = 10`` the
    training steps read tensors back 3 times an epoch (windows of 10, 10, 5), against once a
    step with ``sync_every = 1``; parameters and losses are identical (rtol 0)."""
    runs, reads = {}, {}
    for every in (1, 10):
        counter = _CountReads(monkeypatch)
        cfg = _cfg(f"train.sync_every={every}", f"objective.name={objective}", "train.clip_norm=5")
        runs[every] = train(cfg, tmp_path / f"every{every}")
        reads[every] = sum(counter.counts.values())
    assert [r["step"] for r in runs[1].history] == [25, 50]
    assert reads[1] >= 50, reads  # at least one read a step
    assert reads[10] == 6, reads  # one stacked read per window: 3 windows x 2 epochs
    a, b = _params(runs[1].vae), _params(runs[10].vae)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for r1, r10 in zip(runs[1].history, runs[10].history, strict=True):
        assert r1["train_loss"] == pytest.approx(r10["train_loss"], rel=1e-12, abs=0)
        assert r1["valid_elbo"] == r10["valid_elbo"]


def _stepper(cfg):
    vae = build_vae(cfg, 8)
    return vae, Stepper(cfg.train, vae, build_objective(cfg.objective, vae))


def test_a_non_finite_deferred_step_changes_nothing():
    """With ``sync_every > 1`` the loss stays a tensor and the fused Adam is told to skip a
    non-finite step (``found_inf``): a NaN batch leaves the parameters and Adam's state (step
    counts, moments) exactly as they were, so the next good step equals that of a stepper
    that never saw the NaN batch."""
    cfg = _cfg("train.sync_every=4", "objective.name=iwae", "objective.num_particles=3")
    torch.manual_seed(0)
    x = torch.rand(8, 8).round()
    torch.manual_seed(1)
    vae, stepper = _stepper(cfg)
    torch.manual_seed(1)
    twin_vae, twin = _stepper(cfg)
    torch.manual_seed(2)
    stepper.step(x, 1.0, None)
    torch.manual_seed(2)
    twin.step(x, 1.0, None)
    before, state = _params(vae), stepper.optimizer.state_dict()
    with pyro.validation_enabled(False):  # a NaN batch must reach the objective
        loss, _ = stepper.step(x * math.nan, 1.0, None)
    assert isinstance(loss, torch.Tensor) and torch.isnan(loss)
    after = _params(vae)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    for p_state, q_state in zip(state["state"].values(),
                                stepper.optimizer.state_dict()["state"].values(), strict=True):
        for key in p_state:
            assert torch.equal(p_state[key], q_state[key]), key
    torch.manual_seed(3)
    stepper.step(x, 1.0, None)
    torch.manual_seed(3)
    twin.step(x, 1.0, None)
    for k, v in _params(twin_vae).items():
        assert torch.equal(v, _params(vae)[k]), k


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_nan_step_stops_the_run_at_the_next_read_naming_its_step(tmp_path, monkeypatch):
    """A NaN loss at (0-based) step 13 of epoch 1 with ``sync_every = 10``: the run stops at the
    read after step 20 and names step 13, the first bad one; nothing is committed."""
    from vaelab.model import generative

    real, calls = generative.Generative.forward, {"n": 0}

    def poisoned(self, x, beta=1.0, temperature=None, hard=False):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 14:
                x = x * math.nan
        return real(self, x, beta, temperature, hard)

    monkeypatch.setattr(generative.Generative, "forward", poisoned)
    cfg = _cfg("train.sync_every=10", "objective.name=iwae")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at epoch 1, step 13;"):
        train(cfg, tmp_path / "r")
    assert calls["n"] == 20
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_sync_every_may_change_on_resume(tmp_path):
    """Reading losses less often changes no result, so a run may resume with another value."""
    train(_cfg("train.epochs=1"), tmp_path / "r")
    res = train(_cfg("train.sync_every=7"), tmp_path / "r", resume=True)
    assert [r["epoch"] for r in res.history] == [1, 2]


def test_deterministic_switches_the_kernels_for_the_run_only(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    seen = {}
    real_epoch = train_module.train_epoch

    def spy(*args, **kwargs):
        seen["on"] = torch.are_deterministic_algorithms_enabled()
        seen["benchmark"] = torch.backends.cudnn.benchmark
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", spy)
    train(_cfg("train.epochs=1", "train.deterministic=true"), tmp_path / "r")
    assert seen == {"on": True, "benchmark": False}
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_device_helpers_on_the_cpu():
    t = torch.ones(3)
    assert to_device(t, torch.device("cpu")) is t
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_run_trained_on_a_gpu_is_loaded_on_the_cpu_here_with_a_note(capsys):
    assert run_device("cuda") == torch.device("cpu")
    assert "torch sees no CUDA device here, so it is loaded on the CPU" in capsys.readouterr().err
    assert run_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_sh_says_in_one_line_that_it_needs_a_gpu():
    """``benchmarks/gpu.sh`` without CUDA: exit 2 and one line saying so (its measurements are
    smoke-run on the CPU by ``tests/test_benchmarks.py``, through ``gpu.py --smoke``)."""
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and "sees no CUDA device" in out.stderr
