"""Typed configuration: TOML, ``--set`` parsing by type, resolved configs that reproduce a run,
``vaelab config show``, and bad configs that fail with a clear message and write nothing."""

import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.config import dump_toml, to_dict
from vaelab.registry import ConfigError
from vaelab.resolve import apply_overrides, load_config

TINY = [
    "data.name=synthetic", "model.latent_dim=2", "model.hidden_sizes=[8]", "train.epochs=2",
    "train.batch_size=50", "train.progress=false", "train.valid_limit=50", "eval.num_samples=8",
    "eval.limit=10",
]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def without_none(d):
    if isinstance(d, dict):
        return {k: without_none(v) for k, v in d.items() if v is not None}
    return d


# --------------------------------------------------------------------------------------------
# loading and overriding


def test_toml_load_fills_component_tables(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[data]\nname = "frey_faces"\ndequantize = true\n'
        '[model]\nlatent_dim = 7\nhidden_sizes = [30, 20]\nprior = "vamp"\n'
        'likelihood = {name = "laplace", learn = "pixel"}\n'
        "[train]\nepochs = 3\nlr = 3e-4\n"
    )
    cfg = load_config(path)
    assert cfg.data.name == "frey_faces" and cfg.data.dequantize is True
    assert cfg.model.latent_dim == 7 and cfg.model.hidden_sizes == [30, 20]
    assert cfg.train.epochs == 3 and cfg.train.lr == 3e-4
    # components come back as full tables, defaults filled in
    assert cfg.model.prior.model_dump() == {"name": "vamp", "components": 10, "init_mean": 0.05,
                               "init_std": 0.01}
    assert cfg.model.likelihood.model_dump() == {"name": "laplace", "scale": 0.1, "learn": "pixel",
                                    "min_scale": 1e-3}
    assert cfg.guide.family.model_dump() == {"name": "normal", "min_scale": 1e-5,
                                             "scale": "softplus", "log_var_min": None,
                                             "log_var_max": None}


def test_set_parses_values_by_type():
    raw = apply_overrides({}, [
        "train.epochs=5", "train.lr=1e-4", "objective.beta=0.5", "train.progress=false",
        "train.pyro_validation=True", "model.hidden_sizes=[300, 300]", "guide.hidden_sizes=[]",
        "train.valid_limit=none", "data.name=frey_faces", "data.path=/tmp/some dir/x.npy",
        'model.prior={name = "mog", components = 4}', "model.activation='tanh'",
    ])
    assert raw["train"] == {"epochs": 5, "lr": 1e-4, "progress": False, "pyro_validation": True,
                            "valid_limit": None}
    assert raw["objective"]["beta"] == 0.5 and isinstance(raw["train"]["epochs"], int)
    assert raw["model"]["hidden_sizes"] == [300, 300] and raw["guide"]["hidden_sizes"] == []
    assert raw["data"] == {"name": "frey_faces", "path": "/tmp/some dir/x.npy"}
    assert raw["model"]["prior"] == {"name": "mog", "components": 4}
    assert raw["model"]["activation"] == "tanh"
    cfg = load_config(None, ["model.likelihood=normal", "train.epochs=5", "model.hidden_sizes=[3]"])
    assert cfg.train.epochs == 5 and cfg.model.hidden_sizes == [3]


def test_setting_an_option_promotes_a_name_to_a_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nlikelihood = "normal"\nprior = "mog"\n')
    cfg = load_config(path, ["model.likelihood.scale=0.05", "model.likelihood.learn=shared",
                             "model.prior.components=3"])
    assert cfg.model.likelihood.model_dump() == {"name": "normal", "scale": 0.05, "learn": "shared",
                                    "min_scale": 1e-3}
    assert cfg.model.prior.components == 3
    # the schema's default component is promoted too: guide.family defaults to "normal"
    cfg = load_config(None, ["guide.family.min_scale=0.01"])
    assert cfg.guide.family.model_dump(exclude_defaults=True) == {"name": "normal",
                                                                  "min_scale": 0.01}
    # a later name replaces the table
    cfg = load_config(path, ["model.likelihood.scale=0.05", "model.likelihood=beta"])
    assert cfg.model.likelihood.name == "beta"


@pytest.mark.parametrize("override,match", [
    ("train.epochs", r"expected KEY=VALUE"),
    ("trian.epochs=3", r"section \(did you mean 'train'\?\)"),
    ("train.epochs.x=1", r"train\.epochs: Input should be a valid integer \(got \{.x.: 1\}\)"),
])
def test_malformed_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ['model.prior={name = "vamp", components = 7}', "data.dequantize=true",
                             "data.name=frey_faces", "model.likelihood=beta", "train.lr=2e-4",
                             "guide.hidden_sizes=[5]"])
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    again = load_config(path)
    assert again == cfg
    assert dump_toml(again) == dump_toml(cfg)


def test_config_show_prints_the_resolved_toml(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nlikelihood = "normal"\n')
    overrides = ["model.likelihood.scale=0.2", "model.prior=laplace", "train.epochs=4"]
    assert main(["config", "show", str(path), *sets(overrides)]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown == without_none(to_dict(load_config(path, overrides)))
    assert shown["model"]["likelihood"] == {"name": "normal", "scale": 0.2, "learn": "fixed",
                                            "min_scale": 1e-3}
    assert shown["model"]["prior"] == {"name": "laplace", "scale": pytest.approx(0.5**0.5)}
    assert main(["config", "show"]) == 0  # all defaults, no file
    assert tomllib.loads(capsys.readouterr().out)["train"]["epochs"] == 10


def test_saved_config_reproduces_the_run(tmp_path):
    """The run folder's config.toml (and the checkpoint's copy) hold the resolved config; training
    from it alone gives the same metrics and parameters (same seed, CPU)."""
    first, second = tmp_path / "a", tmp_path / "b"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    overrides = [*TINY, "model.prior=mog", "model.likelihood=continuous_bernoulli"]
    assert main(["train", str(empty), "--out", str(first), *sets(overrides)]) == 0
    saved = tomllib.loads((first / "config.toml").read_text())
    assert saved == without_none(to_dict(load_config(empty, overrides)))
    ckpt = torch.load(first / "checkpoints" / "last.pt", weights_only=False)
    assert without_none(ckpt["config"]) == saved

    assert main(["train", str(first / "config.toml"), "--out", str(second)]) == 0
    assert (second / "config.toml").read_text() == (first / "config.toml").read_text()

    def metrics(run):
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows]

    assert metrics(first) == metrics(second)
    a = torch.load(first / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(second / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# bad configs: a clear message naming key, value and choices; exit 2; nothing written


@pytest.fixture
def grey_npy(tmp_path):
    path = tmp_path / "grey.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 256, (60, 4, 4), dtype=np.uint8))
    return path


BAD = {
    "unknown-prior": (["model.prior=vampp"],
                      ["model.prior", "'vampp'", "did you mean 'vamp'", "valid choices:", "mog"]),
    "misspelled-key": (["train.epoch=3"],
                       ["train.epoch", "unknown key", "did you mean 'epochs'", "valid keys:"]),
    "wrong-type": (["train.epochs=abc"], ["train.epochs", "valid integer", "'abc'"]),
    "negative-scale": (["model.likelihood=normal", "model.likelihood.scale=-0.1"],
                       ["model.likelihood.scale", "greater than 0", "-0.1",
                        "options of likelihood 'normal'"]),
    "bad-choice": (["data.binarize=statc"],
                   ["data.binarize", "'statc'", "'none', 'static' or 'dynamic'",
                    "did you mean 'static'"]),
    "misspelled-option": (['model.likelihood={name = "laplace", scal = 0.1}'],
                          ["model.likelihood.scal", "unknown key", "did you mean 'scale'"]),
    "unknown-likelihood": (["model.likelihood=gaussian"],
                           ["model.likelihood", "'gaussian'", "valid choices:", "normal"]),
    "bernoulli-on-grey": (["data.name=array", "data.path={grey}", "model.likelihood=bernoulli"],
                          ["model.likelihood", "binary", "grey levels", "data.binarize"]),
    "dequantized-discrete": (["data.name=array", "data.path={grey}", "data.dequantize=true",
                              "model.likelihood=discretized_logistic"],
                             ["model.likelihood", "off that grid", "data.dequantize = false"]),
    "dequantize-binary": (["data.dequantize=true", "model.likelihood=beta"],
                          ["data.dequantize", "binary"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_fails_clearly_and_writes_nothing(case, tmp_path, grey_npy, capsys):
    overrides, expected = BAD[case]
    overrides = [o.replace("{grey}", str(grey_npy)) for o in overrides]
    out = tmp_path / "run"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert main(["train", str(empty), "--out", str(out), *sets([*TINY, *overrides])]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    assert not out.exists()


@pytest.mark.parametrize("text,expected", [
    ("[train]\nepoch = 3\n", ["train.epoch", "did you mean 'epochs'"]),
    ("[trian]\nepochs = 3\n", ["[trian]", "did you mean 'train'"]),
    ("[model]\nprior = {name = \"mog\", component = 3}\n",
     ["model.prior.component", "did you mean 'components'"]),
    ("[train\nepochs = 3\n", ["not valid TOML"]),
])
def test_bad_toml_file_fails_clearly(text, expected, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for e in expected:
        assert e in err, (e, err)
    assert not out.exists()


@pytest.mark.skipif(not os.environ.get("VAELAB_DATA") or not (
    Path(os.environ.get("VAELAB_DATA", "")) / "frey_faces" / "freyfaces.pkl").is_file(),
    reason="needs the Frey faces file in $VAELAB_DATA")
def test_bernoulli_on_frey_faces_fails_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["config", "show", "--set", "data.name=frey_faces"]) == 0  # a valid config
    capsys.readouterr()
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    rc = main(["train", str(empty), "--out", str(out), *sets(
        ["data.name=frey_faces", "model.likelihood=bernoulli", "train.epochs=1"])])
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs binary data" in err and "data.binarize" in err
    assert not out.exists()


def test_options_of_a_latent_dependent_default_are_validated_against_that_default(capsys):
    """Issue 9: ``--set guide.family.kl=categorical`` on a categorical-latent config used to be
    checked against the schema default ('normal') and fail with an unknown key; the default that
    applies is the latent type's ('relaxed'), the one ``config show`` prints."""
    latent = "model.latent={name='categorical', num_variables=2, num_classes=3}"
    cfg = load_config(None, [latent, "guide.family.kl=categorical"])
    assert cfg.guide.family.model_dump() == {"name": "relaxed", "kl": "categorical", "hard": False,
                                             "estimator": "gumbel_softmax", "num_gumbels": 10,
                                             "gap": 1.0}
    assert cfg.model.prior.name == "categorical"
    assert main(["config", "show", "--set", latent, "--set", "guide.family.hard=true",
                 "--set", "guide.family.kl=categorical"]) == 0
    assert 'name = "relaxed"' in capsys.readouterr().out
    # and an option the latent's default family lacks is still refused, naming the key
    with pytest.raises(ConfigError, match="guide.family.min_scale"):
        load_config(None, [latent, "guide.family.min_scale=0.1"])
    # the Gaussian default is unaffected
    assert load_config(None, ["guide.family.min_scale=0.1"]).guide.family.min_scale == 0.1


def test_eval_section_holds_the_estimator_options():
    cfg = load_config(None, ["eval.method=ais", "eval.ais_steps=50", "eval.proposal=inflated:2"])
    assert (cfg.eval.method, cfg.eval.ais_steps, cfg.eval.ais_chains) == ("ais", 50, 16)
    assert cfg.eval.proposal.model_dump() == {"name": "inflated", "factor": 2.0}
    with pytest.raises(ConfigError, match="eval.proposal"):
        load_config(None, ["eval.proposal=inflatd:2"])


# --------------------------------------------------------------------------------------------
# issue 28, item 14: configs that failed badly fail in one line, exit 2, naming the key


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_naming_the_key(tmp_path, empty_cfg, error_line):
    out = tmp_path / "run"
    argv = ["train", str(empty_cfg), "--out", str(out), *sets([*TINY, "train.device=cuda"])]
    assert main(argv) == 2
    line = error_line()
    assert "train.device = 'cuda'" in line and "no CUDA device" in line, line
    assert not out.exists()


DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize("where", ["file", "set"])
def test_a_3000_deep_array_is_one_line(where, tmp_path, error_line):
    path = tmp_path / "deep.toml"
    path.write_text(f"[model]\nhidden_sizes = {DEEP}\n")
    argv = (["config", "show", str(path)] if where == "file"
            else ["config", "show", "--set", f"model.hidden_sizes={DEEP}"])
    assert main(argv) == 2
    line = error_line()
    assert "nested more than 32 deep" in line, line
    assert where == "file" and "deep.toml" in line or "model.hidden_sizes" in line, line
    # a 33-deep value that parses is refused too; shallow nesting still parses
    with pytest.raises(ConfigError, match="model.hidden_sizes: .*nested more than"):
        apply_overrides({}, ["model.hidden_sizes=" + "[" * 33 + "]" * 33])
    assert apply_overrides({}, ["model.hidden_sizes=[[[1]]]"])["model"]["hidden_sizes"] == [[[1]]]


SEEDS = ["train.seed", "eval.seed", "data.split_seed"]


@pytest.mark.parametrize("key", SEEDS)
@pytest.mark.parametrize("value", [-1, 2**32, 10**30])
def test_seeds_outside_0_to_2_32_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"])
    assert key in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_every_seed_field_is_bounded_and_the_bounds_are_accepted():
    from vaelab.config import MAX_SEED, RunConfig
    found = [f"{section}.{name}" for section, fields in RunConfig().model_dump().items()
             if isinstance(fields, dict) for name in fields if "seed" in name]
    assert sorted(found) == sorted(SEEDS)
    cfg = load_config(None, [f"{key}={MAX_SEED}" for key in SEEDS])
    assert (cfg.train.seed, cfg.eval.seed, cfg.data.split_seed) == (MAX_SEED,) * 3
    assert load_config(None, [f"{key}=0" for key in SEEDS]).train.seed == 0


def test_dev_zero_and_a_huge_file_are_refused_in_one_line(tmp_path, error_line):
    assert main(["config", "show", "/dev/zero"]) == 2
    line = error_line()
    assert "'/dev/zero'" in line and "over 1 MiB" in line, line
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * (2**20 // 10 + 1))
    assert main(["train", str(big), "--out", str(tmp_path / "run")]) == 2
    assert "over 1 MiB" in error_line()
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# issue 29, item 6: data.path is never ignored silently


def test_data_path_without_a_name_means_the_array_data_set(tmp_path, grey_npy):
    cfg = load_config(None, [f"data.path={grey_npy}"])
    assert (cfg.data.name, cfg.data.path) == ("array", str(grey_npy))
    path = tmp_path / "c.toml"
    path.write_text(f"[data]\npath = '{grey_npy}'\n")
    assert load_config(path).data.name == "array"


@pytest.mark.parametrize("name", ["binarized_mnist", "synthetic", "digits"])
def test_data_path_beside_a_data_set_that_reads_no_file_is_refused(name, tmp_path, error_line):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *sets([f"data.name={name}", "data.path=x.npy"])]
    assert main(argv) == 2
    assert error_line().endswith(
        f"data.path is set but data.name is {name!r}, which reads no file; did you mean "
        'data.name = "array"?')
    assert not out.exists()


def test_a_saved_config_whose_data_path_was_ignored_loads_as_it_trained():
    """Before version 4 the path was ignored: the upgrade drops it, the run means what it did."""
    from vaelab.resolve import resolve
    saved = {"version": 3, "data": {"name": "synthetic", "path": "gone.npy"}}
    cfg = resolve(saved, saved=True)
    assert (cfg.data.name, cfg.data.path) == ("synthetic", None)


# --------------------------------------------------------------------------------------------
# issue 29, item 9 and item 8: what resolution chose is said in `config show`


def test_config_show_says_which_objective_and_encoder_input_were_chosen_and_why(capsys):
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert ('name = "mean_field"  # default: analytic KL for normal guide vs standard_normal '
            "prior") in out.splitlines()
    assert 'input_transform = "none"  # default: bernoulli does not score counts' in out
    assert tomllib.loads(out)["objective"]["name"] == "mean_field"
    assert main(["config", "show", "--set", "model.prior=vamp", "--set",
                 "model.likelihood=negative_binomial"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ('name = "trace"  # default: Monte Carlo KL, no closed form for normal guide vs vamp '
            "prior") in lines
    assert any(line.startswith('input_transform = "log1p"  # default: the encoder reads '
                               "log(1 + x)") for line in lines)
    # trace is one --set away, and a choice the user made carries no "default" comment
    assert main(["config", "show", "--set", "objective.name=trace"]) == 0
    out = capsys.readouterr().out
    assert 'name = "trace"\n' in out and "Monte Carlo KL" not in out


def test_a_resolved_config_with_chosen_keys_round_trips(tmp_path):
    """The comments are on the resolved values: a dumped config reloads to an equal config and
    dumps to the same text (what a run folder's config.toml relies on)."""
    cfg = load_config(None, ["model.likelihood=poisson", "data.values=counts"])
    assert cfg.chosen.keys() == {"objective.name", "guide.input_transform"}
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    again = load_config(path)
    assert again == cfg and dump_toml(again) == dump_toml(cfg)
    assert (again.objective.name, again.guide.input_transform) == ("mean_field", "log1p")


# --------------------------------------------------------------------------------------------
# issue 24, item 2: train.optimizer = "sgd" with train.momentum


def test_sgd_with_momentum_is_an_option_shown_by_config_show(capsys):
    assert main(["config", "show", "--set", "train.optimizer=sgd",
                 "--set", "train.momentum=0.9"]) == 0
    train = tomllib.loads(capsys.readouterr().out)["train"]
    assert (train["optimizer"], train["momentum"]) == ("sgd", 0.9)
    assert load_config(None).train.momentum == 0.0  # today's meaning: Adam, no momentum
    with pytest.raises(ConfigError, match="train.*momentum.*SGD's"):
        load_config(None, ["train.momentum=0.9"])  # with Adam it would be ignored
    with pytest.raises(ConfigError, match="train.momentum"):
        load_config(None, ["train.optimizer=sgd", "train.momentum=1.0"])
