"""Every bad input is one clear line on stderr and exit 2, and nothing is written (issue 10,
item 8), plus a property-based test over ``--set`` overrides."""

from __future__ import annotations

import math
import pickle
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaelab.cli import main
from vaelab.config import RunConfig
from vaelab.runs.checkpoint import read_metrics, write_jsonl

TINY = ["data.name=synthetic", "model.latent_dim=3", "model.hidden_sizes=[8]", "train.epochs=1",
        "train.batch_size=50", "train.progress=false", "eval.num_samples=10", "eval.limit=10"]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]






def train_fails(error_line, empty_cfg, out, overrides) -> str:
    assert main(["train", str(empty_cfg), "--out", str(out), *sets(overrides)]) == 2
    line = error_line()
    assert not out.exists(), list(out.rglob("*"))
    return line


@pytest.mark.parametrize("override,expected", [
    ("train.lr=inf", ["train.lr", "finite"]),
    ("train.lr=nan", ["train.lr", "finite"]),
    ("train.epochs=true", ["train.epochs", "boolean true"]),
    ("train.batch_size=false", ["train.batch_size", "boolean"]),
    ("model.latent_dim=100000000", ["GiB", "memory available", "model.latent_dim"]),
    ("data.valid_fraction=0.0", ["validation split is empty"]),
])
def test_values_that_cannot_train_are_refused(override, expected, tmp_path, empty_cfg, capsys,
                                              error_line):
    base = [o for o in TINY if not o.startswith("data.name")]
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).integers(0, 2, (40, 9)).astype(np.float32))
    line = train_fails(error_line, empty_cfg, tmp_path / "run",
                       [*base, "data.name=array", f"data.path={data}", override])
    for text in expected:
        assert text in line, (text, line)


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def test_an_empty_training_split_is_refused(tmp_path, empty_cfg, capsys, error_line):
    path = _npz(tmp_path, train=np.zeros((0, 9), np.float32), valid=np.ones((5, 9), np.float32))
    line = train_fails(error_line, empty_cfg, tmp_path / "run",
                       [*TINY, "data.name=array", f"data.path={path}"])
    assert "no data" in line and "'train'" in line


def test_zero_features_are_refused(tmp_path, empty_cfg, capsys, error_line):
    path = tmp_path / "d0.npy"
    np.save(path, np.zeros((30, 0), np.float32))
    line = train_fails(error_line, empty_cfg, tmp_path / "run",
                       [*TINY, "data.name=array", f"data.path={path}"])
    assert "D > 0" in line


def test_a_validation_split_outside_the_support_is_refused(tmp_path, empty_cfg, capsys, error_line):
    rng = np.random.default_rng(0)
    path = _npz(tmp_path, train=rng.integers(0, 2, (40, 9)).astype(np.float32),
                valid=rng.random((10, 9)).astype(np.float32))  # grey levels: not Bernoulli
    line = train_fails(error_line, empty_cfg, tmp_path / "run",
                       [*TINY, "data.name=array", f"data.path={path}"])
    assert "validation split" in line and "binary" in line


def test_evaluating_an_empty_or_unfit_test_split_is_one_line(tmp_path, empty_cfg, capsys,
                                                             error_line):
    rng = np.random.default_rng(0)
    binary = rng.integers(0, 2, (40, 9)).astype(np.float32)
    path = _npz(tmp_path, train=binary, valid=binary[:10], test=rng.random((10, 9)).astype(
        np.float32))
    out = tmp_path / "run"
    assert main(["train", str(empty_cfg), "--out", str(out),
                 *sets([*TINY, "data.name=array", f"data.path={path}"])]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    line = error_line()
    assert "test split" in line and "binary" in line
    # a test split carved with test_fraction = 0 is empty
    single = tmp_path / "one.npy"
    np.save(single, binary)
    out2 = tmp_path / "run2"
    assert main(["train", str(empty_cfg), "--out", str(out2),
                 *sets([*TINY, "data.name=array", f"data.path={single}",
                        "data.test_fraction=0.0"])]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out2)]) == 2
    assert "has no points" in error_line()


@pytest.mark.parametrize("flags,expected", [
    (["--num-samples", "0"], "eval.num_samples"),
    (["--limit", "0"], "eval.limit"),
    (["--limit", "-1"], "eval.limit"),
    (["--max-memory", "inf"], "eval.max_memory_mb"),
])
def test_evaluate_flags_that_mean_nothing_are_refused(flags, expected, tmp_path, empty_cfg,
                                                      capsys, error_line):
    out = tmp_path / "run"
    assert main(["train", str(empty_cfg), "--out", str(out), *sets(TINY)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), *flags]) == 2
    assert expected in error_line()


def test_sample_needs_a_positive_count(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "nowhere", "-n", "-1"])
    assert exc.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys, error_line):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[data]\nname = "d\xe9mo"\n'.encode("latin-1"))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    line = error_line()
    assert str(path) in line and "UTF-8" in line
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run")]) == 2  # a directory
    assert "cannot be read" in error_line()


def test_uint8_arrays_say_what_was_assumed(tmp_path, empty_cfg, capsys):
    path = tmp_path / "u8.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (40, 9), dtype=np.uint8))
    assert main(["train", str(empty_cfg), "--out", str(tmp_path / "run"),
                 *sets([*TINY, "data.name=array", f"data.path={path}",
                        "model.likelihood=continuous_bernoulli"])]) == 0
    assert "uint8 values read as 8-bit grey levels" in capsys.readouterr().err


def test_a_hostile_checkpoint_is_refused_as_code(tmp_path, empty_cfg, capsys, error_line):
    out = tmp_path / "run"
    assert main(["train", str(empty_cfg), "--out", str(out), *sets(TINY)]) == 0
    capsys.readouterr()

    class Payload:
        def __reduce__(self):
            return (print, ("this would have run",))

    for name in ("best.pt", "last.pt", "prev.pt"):
        torch.save({"model": Payload()}, out / "checkpoints" / name)
    assert main(["evaluate", str(out)]) == 2
    line = error_line()
    assert "refused" in line and "run code" in line and "will likely succeed" not in line
    assert "this would have run" not in capsys.readouterr().out
    assert pickle.dumps(Payload())  # the payload is real


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own warning for the loss
def test_a_nan_at_the_first_step_says_there_is_no_checkpoint(tmp_path, monkeypatch):
    from vaelab.model import generative
    from vaelab.resolve import load_config
    from vaelab.runs.train import NonFiniteLossError, train

    real = generative.Generative.forward

    def poisoned(self, x, beta=1.0, temperature=None, hard=False):
        return real(self, x * math.nan, beta, temperature, hard)

    monkeypatch.setattr(generative.Generative, "forward", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        train(load_config(None, TINY), tmp_path / "run")
    assert "step 0" in str(err.value) and "no epoch was committed" in str(err.value)
    assert "last good checkpoint" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_run_that_blows_up_before_its_first_commit_leaves_nothing(tmp_path, empty_cfg,
                                                                    capsys, error_line):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((40, 9)).astype(np.float32))
    line = train_fails(error_line, empty_cfg, tmp_path / "run",
                       [*TINY, "data.name=array", f"data.path={path}", "train.lr=1e6",
                        "model.likelihood={name='normal', learn='pixel'}", "train.epochs=3"])
    assert "no epoch was committed" in line and "epoch 1" in line


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, empty_cfg,
                                                                     capsys, error_line):
    out = tmp_path / "run"
    base = [*TINY, "train.epochs=1", "train.batch_size=10"]
    assert main(["train", str(empty_cfg), "--out", str(out), *sets(base)]) == 0
    good = (out / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", str(out / "config.toml"), "--out", str(out), "--resume",
                 "--set", "train.epochs=3", "--set", "train.lr=1e4"]) == 2  # lr is no
    assert "train.lr" in error_line()  # resumable key: refused, as before
    # a fresh run at lr = 1e4 explodes: stopped at a named epoch and step, exit 2
    fresh = tmp_path / "fresh"
    assert main(["train", str(empty_cfg), "--out", str(fresh),
                 *sets([*base, "train.lr=1e4", "train.epochs=5"])]) == 2
    line = error_line()
    assert ("diverged" in line or "non-finite" in line) and "epoch" in line and "step" in line
    assert (out / "checkpoints" / "last.pt").read_bytes() == good


def test_metrics_are_valid_json_whatever_the_values(tmp_path):
    write_jsonl(tmp_path / "metrics.jsonl", [{"epoch": 1, "valid_elbo": math.nan,
                                              "x": [math.inf, 1.0]}])
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_metrics(tmp_path) == [{"epoch": 1, "valid_elbo": None, "x": [None, 1.0]}]


# --------------------------------------------------------------------------------------------
# property: any --set either validates or is one line naming the key, never a traceback

KEYS = sorted(f"{section}.{key}" for section, fields in RunConfig().model_dump().items()
              if isinstance(fields, dict) for key in fields)
VALUES = st.one_of(
    st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(repr),
    st.sampled_from(["true", "false", "none", "inf", "-inf", "nan", "[]", "[1, 2]", "{}",
                     "{name = 'mog'}", "'vamp'", "[300, -1]", "1e400", '"', "[", "=", ""]),
    st.text(string.printable, max_size=12),
)
KEYS_OR_JUNK = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k + "x"),
                         st.text(string.ascii_lowercase + "._", min_size=1, max_size=20))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=KEYS_OR_JUNK, value=VALUES)
def test_any_override_validates_or_is_one_line_naming_the_key(key, value, tmp_path_factory,
                                                              capsys):
    """300 seeded overrides through ``vaelab config show`` (validation only, nothing to write)."""
    capsys.readouterr()
    rc = main(["config", "show", "--set", f"{key}={value}"])
    out, err = capsys.readouterr()
    assert rc in (0, 2) and "Traceback" not in err
    if rc == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        section = key.split(".")[0]
        assert (key in lines[0] or f"{key}={value}"[:40] in lines[0]
                or f"'{section}'" in lines[0] or section in lines[0]), (key, value, err)
    else:
        assert out.strip() and not err.strip()
