"""One place for global state: every test starts with an empty param store, Pyro validation on,
the same seeds and one torch thread."""

import os

import pyro
import pytest
import torch

os.environ.setdefault("VAELAB_OFFLINE", "1")  # tests never download


@pytest.fixture(autouse=True)
def _reset_pyro_state():
    # small tensors: one thread is faster, and immune to a busy machine's oversubscription
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    pyro.clear_param_store()


@pytest.fixture
def tiny_cfg_overrides():
    """Overrides that turn any config into a seconds-long run on seeded synthetic data."""
    return [
        "data.name=synthetic",
        "model.latent_dim=4",
        "model.hidden_sizes=[16]",
        "train.epochs=2",
        "train.batch_size=32",
        "train.progress=false",
        "train.pyro_validation=true",
        "eval.num_samples=50",
        "eval.limit=40",
    ]


@pytest.fixture
def ppca():
    """Probabilistic PCA (D=6, d=2, σ=0.5) with its guide at the exact posterior, 20 points drawn
    from it, and their closed-form log p(x): ``(vae, W, b, x, log_px)``
    (see tests/ground_truth.py)."""
    from ground_truth import SIGMA, exact_log_px, make_ppca, sample_ppca

    vae, W, b = make_ppca(D=6, d=2, sigma=SIGMA, seed=0)
    x = sample_ppca(20, W, b, SIGMA, seed=1)
    return vae, W, b, x, exact_log_px(x, W, b, SIGMA)


@pytest.fixture
def empty_cfg(tmp_path):
    """An empty TOML file: every key at its default."""
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


@pytest.fixture
def error_line(capsys):
    """Read stderr and return its one error line, asserting it is the only line besides
    ``vaelab: note:`` lines and that no traceback was printed."""

    def read() -> str:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines()
                 if line.strip() and not line.startswith("vaelab: note:")]
        assert "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith("vaelab ") and ": error: " in lines[0], err
        return lines[0]

    return read
