"""vaelab: variational autoencoders as Pyro models and guides.

Python API::

    from vaelab import load_config, train, load_run, evaluate

    cfg = load_config("experiments/configs/gaussian_mnist.toml", ["train.epochs=5"])
    result = train(cfg, "runs/demo")
    run = load_run("runs/demo")
    print(evaluate(run).summary())              # as the run's [eval] section says

Components of your own (:mod:`vaelab.registry`)::

    from vaelab import Options, register

    @register("prior", "logistic", LogisticOptions)   # config: plugins = ["my_module"]
    class LogisticPrior(Prior): ...                   #   and   prior = "logistic"
                                                      # or just prior = "my_module:LogisticPrior"
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from vaelab._version import __version__ as __version__

#: public name → the module defining it; imported on first use (PEP 562), so that
#: ``vaelab --help`` and ``import vaelab`` do not pay for torch, Pyro and the data stack
_EXPORTS = {
    "ConfigError": "vaelab.config",
    "RunConfig": "vaelab.config",
    "NonFiniteLossError": "vaelab.runs.train",
    "train": "vaelab.runs.train",
    "Options": "vaelab.registry",
    "register": "vaelab.registry",
    "load_config": "vaelab.resolve",
    "Run": "vaelab.runs.run",
    "evaluate": "vaelab.runs.run",
    "load_run": "vaelab.runs.run",
    "VAE": "vaelab.vae",
    "build_vae": "vaelab.vae",
}

__all__ = [
    "VAE",
    "ConfigError",
    "NonFiniteLossError",
    "Options",
    "Run",
    "RunConfig",
    "build_vae",
    "evaluate",
    "load_config",
    "load_run",
    "register",
    "train",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs; nothing is imported at run time
    from vaelab.config import ConfigError, RunConfig
    from vaelab.registry import Options, register
    from vaelab.resolve import load_config
    from vaelab.runs.run import Run, evaluate, load_run
    from vaelab.runs.train import NonFiniteLossError, train
    from vaelab.vae import VAE, build_vae
