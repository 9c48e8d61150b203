"""One place for global state: every test starts with an empty param store, Pyro validation on,
and the same seeds."""

import os

import pyro
import pytest
import torch

os.environ.setdefault("VAELAB_OFFLINE", "1")  # tests never download


@pytest.fixture(autouse=True)
def _reset_pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
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
