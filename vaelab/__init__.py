"""vaelab: variational autoencoders as Pyro models and guides.

Python API::

    from vaelab import load_config, train, load_run, evaluate

    cfg = load_config("experiments/configs/gaussian_mnist.toml", ["train.epochs=5"])
    result = train(cfg, "runs/demo")
    run = load_run("runs/demo")
    print(evaluate(run, num_samples=5000).summary())
"""

__version__ = "0.1.0"

from vaelab.config import ConfigError, RunConfig  # noqa: E402
from vaelab.inference.train import NonFiniteLossError, train  # noqa: E402
from vaelab.resolve import load_config  # noqa: E402
from vaelab.run import Run, evaluate, load_run  # noqa: E402
from vaelab.vae import VAE, build_vae  # noqa: E402

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "Run",
    "RunConfig",
    "VAE",
    "build_vae",
    "evaluate",
    "load_config",
    "load_run",
    "train",
]
