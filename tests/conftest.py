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
