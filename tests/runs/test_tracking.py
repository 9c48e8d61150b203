"""Experiment tracking ([log], vaelab/runs/tracking.py): tiny runs log to TensorBoard and MLflow
in a temporary folder, and the logs are read back with the libraries' own readers (TensorBoard's
``EventAccumulator``, MLflow's ``MlflowClient`` on the file store) and compared with what the
run folder says (``metrics.jsonl``, ``vaelab evaluate --json``, the PNGs of the report)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from vaelab.cli import main
from vaelab.config import LogConfig
from vaelab.registry import ConfigError
from vaelab.resolve import load_config, resolve
from vaelab.runs.checkpoint import read_metrics
from vaelab.runs.resume import _config_changes
from vaelab.runs.tracking import RUN_ID_FILE, Tracker, Tracking
from vaelab.runs.train import train

BACKENDS = ["tensorboard", "mlflow"]
STEPS_PER_EPOCH = 13  # 400 synthetic training points in batches of 32


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    # what opening the mlflow backend sets; set here so that it is unset after each test
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _cfg(tiny_cfg_overrides, *extra):
    return load_config(None, [*tiny_cfg_overrides, *extra])


def _backends(*names: str) -> str:
    return f"log.backends={json.dumps(list(names))}"


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


# --------------------------------------------------------------------------------------------
# the libraries' own readers, one shape for both: {tag: [(step, value), ...]}


def _tb(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = _tb(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _tb_hparams(run_dir: Path) -> dict:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = _tb(run_dir).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()}


def _mlflow(run_dir: Path, store: Path | None = None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(store or run_dir / "mlruns").as_uri())
    return client, (run_dir / RUN_ID_FILE).read_text().strip()


def _mlflow_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    client, run_id = _mlflow(run_dir)
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in keys}


READ_SCALARS = {"tensorboard": _tb_scalars, "mlflow": _mlflow_scalars}
#: TensorBoard stores float32; MLflow the float itself
REL = {"tensorboard": 1e-6, "mlflow": 1e-12}


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_logged_values_are_those_of_metrics_jsonl(backend, tiny_cfg_overrides, tmp_path):
    """Per-epoch rows at each epoch's last step; step points at every 3rd global step across
    the epoch boundary, each the mean loss per point of its window."""
    out = tmp_path / "run"
    result = train(_cfg(tiny_cfg_overrides, _backends(backend), "log.every_n_steps=3"), out)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    got = READ_SCALARS[backend](out)
    rel = REL[backend]
    for key in ("valid_elbo", "train_loss", "epoch_time"):
        want = [(r["step"], pytest.approx(r[key], rel=rel)) for r in rows]
        assert got[f"epoch/{key}"] == want, key
    assert [v for _, v in got["epoch/epoch"]] == [1.0, 2.0]
    assert rows == result.history
    steps = list(range(3, 2 * STEPS_PER_EPOCH + 1, 3))  # 3, 6, ..., 24
    for tag in ("train/loss", "train/beta", "train/lr"):
        assert [s for s, _ in got[tag]] == steps, tag
    assert all(v == 1.0 for _, v in got["train/beta"])
    assert all(v == pytest.approx(1e-3, rel=rel) for _, v in got["train/lr"])
    assert "train/temperature" not in got  # a Gaussian latent has no τ


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_window_of_one_epoch_logs_the_epochs_training_loss(backend, tiny_cfg_overrides,
                                                             tmp_path):
    """every_n_steps = steps per epoch: each point is Σ loss / Σ B over exactly one epoch,
    which is the epoch's train_loss in metrics.jsonl."""
    out = tmp_path / "run"
    train(_cfg(tiny_cfg_overrides, _backends(backend), f"log.every_n_steps={STEPS_PER_EPOCH}"),
          out)
    want = [(r["step"], pytest.approx(r["train_loss"], rel=REL[backend]))
            for r in read_metrics(out)]
    assert READ_SCALARS[backend](out)["train/loss"] == want


def test_the_config_is_logged_as_hyperparameters(tiny_cfg_overrides, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_cfg_overrides, _backends(*BACKENDS), "train.max_steps_per_epoch=2")
    train(cfg, out)
    hp = _tb_hparams(out)
    assert hp["model.latent_dim"] == 4 and hp["train.lr"] == pytest.approx(1e-3)
    assert hp["data.name"] == "synthetic" and hp["model.prior.name"] == "standard_normal"
    assert hp["model.hidden_sizes"] == "[16]" and hp["train.pyro_validation"] == "true"
    assert hp["log.backends"] == '["tensorboard", "mlflow"]'
    client, run_id = _mlflow(out)
    params = client.get_run(run_id).data.params
    assert params["model.latent_dim"] == "4" and params["train.lr"] == "0.001"
    assert params["model.prior.name"] == "standard_normal" and params["data.limit"] == "null"
    assert params.keys() == hp.keys()  # the same flattened config, every key of it
    assert {"train.epochs", "eval.num_samples", "guide.family.name"} <= params.keys()


def test_evaluation_metrics_and_report_pngs_are_logged(tiny_cfg_overrides, tmp_path, capsys):
    """``train --evaluate`` then ``evaluate --json --report``: log p(x), ESS and k̂ summaries
    equal the printed JSON (same [eval] and seed, so both log the same values), and every PNG
    of the run folder is an image in TensorBoard and an artifact in MLflow."""
    out, empty = tmp_path / "run", tmp_path / "c.toml"
    empty.write_text("")
    sets = _sets([*tiny_cfg_overrides, _backends(*BACKENDS)])
    assert main(["train", str(empty), "--out", str(out), *sets, "--evaluate"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--report", "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    best = max(read_metrics(out), key=lambda r: r["valid_elbo"])["step"]  # the best checkpoint
    tb, ml = _tb_scalars(out), _mlflow_scalars(out)
    keys = {"log_likelihood": metrics["log_likelihood"], "elbo": metrics["elbo"],
            "ess/median": metrics["ess"]["median"], "ess_min": metrics["ess_min"],
            "pareto_k/max": metrics["pareto_k"]["max"], "num_flagged": metrics["num_flagged"]}
    for key, want in keys.items():
        for backend, got in (("tensorboard", tb), ("mlflow", ml)):
            points = got[f"eval/test/{key}"]
            assert len(points) == 2, (backend, key)  # train --evaluate, then evaluate
            assert [v for _, v in points] == [pytest.approx(want, rel=REL[backend])] * 2
            assert {s for s, _ in points} == {best}
    pngs = sorted(p for p in out.glob("*.png"))
    assert {p.stem for p in pngs} >= {"curves", "reconstructions", "samples"}
    acc = _tb(out)
    for png in pngs:
        events = acc.Images(f"report/{png.stem}")
        with Image.open(png) as image:
            assert (events[-1].width, events[-1].height) == image.size
    client, run_id = _mlflow(out)
    artifacts = {Path(f.path).name for f in client.list_artifacts(run_id, "report")}
    assert artifacts == {p.name for p in pngs}
    assert client.get_run(run_id).info.status == "FINISHED"


def _next_second():
    """TensorBoard names event files by the second they were opened; writers of one test
    process opened in one second would sort by a counter, not by time."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def test_resume_continues_the_same_logs(tiny_cfg_overrides, tmp_path):
    """Epoch 1, then points an interrupted process logged after that commit, then --resume to
    epoch 2: TensorBoard hides the stale points (purge_step), MLflow appends to the same run,
    and each step appears once with the value metrics.jsonl has."""
    out = tmp_path / "run"
    log = [_backends(*BACKENDS), "log.every_n_steps=5"]
    train(_cfg(tiny_cfg_overrides, *log, "train.epochs=1"), out)
    client, run_id = _mlflow(out)
    _next_second()
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tb")) as stale:  # logged, never committed
        stale.add_scalar("train/loss", 999.0, 15)
        stale.add_scalar("epoch/valid_elbo", 999.0, 2 * STEPS_PER_EPOCH)
    _next_second()
    train(_cfg(tiny_cfg_overrides, *log, "train.epochs=2"), out, resume=True)
    rows = read_metrics(out)
    for backend in BACKENDS:
        got = READ_SCALARS[backend](out)
        assert got["epoch/valid_elbo"] == [
            (r["step"], pytest.approx(r["valid_elbo"], rel=REL[backend])) for r in rows]
        assert [s for s, _ in got["train/loss"]] == [5, 10, 15, 20, 25]
        assert 999.0 not in [v for _, v in got["train/loss"]]
    assert (out / RUN_ID_FILE).read_text().strip() == run_id
    run = client.get_run(run_id)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.info.status == "FINISHED"
    # params are immutable in MLflow: the value a resume changed is a tag of the same name
    assert run.data.params["train.epochs"] == "1" and run.data.tags["train.epochs"] == "2"


def test_tracking_can_be_turned_on_at_resume(tiny_cfg_overrides, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_cfg_overrides, "train.epochs=1"), out)
    assert not (out / "tb").exists()
    train(_cfg(tiny_cfg_overrides, _backends("tensorboard"), "log.every_n_steps=13"), out,
          resume=True)
    got = _tb_scalars(out)
    assert [s for s, _ in got["epoch/valid_elbo"]] == [2 * STEPS_PER_EPOCH]
    assert [s for s, _ in got["train/loss"]] == [2 * STEPS_PER_EPOCH]


def test_runs_share_a_log_dir(tiny_cfg_overrides, tmp_path):
    """log.dir: TensorBoard writes LOG/tb/RUN for each run, MLflow one store with a run per
    run folder in log.experiment."""
    shared = tmp_path / "logs"
    for name in ("a", "b"):
        train(_cfg(tiny_cfg_overrides, _backends(*BACKENDS), f"log.dir={str(shared)!r}",
                   "log.experiment=prior_sweep", "train.epochs=1"), tmp_path / name)
    assert sorted(p.name for p in (shared / "tb").iterdir()) == ["a", "b"]
    assert not (tmp_path / "a" / "tb").exists() and not (tmp_path / "a" / "mlruns").exists()
    client, _ = _mlflow(tmp_path / "a", store=shared / "mlruns")
    experiment = client.get_experiment_by_name("prior_sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "b"]
    assert {r.info.run_id for r in runs} == {
        (tmp_path / n / RUN_ID_FILE).read_text().strip() for n in ("a", "b")}


def test_a_fresh_run_that_fails_before_its_first_commit_leaves_nothing(tiny_cfg_overrides,
                                                                       tmp_path, monkeypatch):
    import vaelab.runs.train as train_module

    monkeypatch.setattr(train_module, "validate", lambda *a, **k: {"valid_elbo": float("nan")})
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="validation score"):
        train(_cfg(tiny_cfg_overrides, _backends(*BACKENDS), "log.every_n_steps=1"), out)
    assert not out.exists()


def _hide(monkeypatch, package: str) -> None:
    """Make ``import package`` (and of its loaded submodules) fail, as if not installed."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


@pytest.mark.parametrize("backend,module,package", [
    ("tensorboard", "torch.utils.tensorboard", "tensorboard"),
    ("mlflow", "mlflow", "mlflow-skinny"),
])
def test_a_missing_library_is_one_line_naming_the_install(backend, module, package,
                                                         tiny_cfg_overrides, tmp_path,
                                                         monkeypatch, error_line):
    _hide(monkeypatch, module)
    cfg = _cfg(tiny_cfg_overrides, _backends(backend))
    with pytest.raises(ConfigError, match=rf"pip install 'vaelab\[{backend}\]'"):
        Tracking.for_run(cfg, tmp_path / "run")
    out, empty = tmp_path / "run", tmp_path / "c.toml"
    empty.write_text("")
    sets = _sets([*tiny_cfg_overrides, _backends(backend)])
    assert main(["train", str(empty), "--out", str(out), *sets]) == 2
    line = error_line()
    assert f"pip install 'vaelab[{backend}]'" in line and f"pip install {package}" in line
    assert not out.exists()  # refused before anything was written


def test_log_section_defaults_validation_and_resume():
    assert load_config(None).log == LogConfig(backends=[], every_n_steps=50, dir=None,
                                              experiment="vaelab")
    # a config saved before [log] existed (version 1, no section) loads with tracking off
    assert resolve({"data": {"name": "synthetic"}}, saved=True).log.backends == []
    for bad, match in ((_backends("tensorbord"), "log.backends"),
                       (_backends("mlflow", "mlflow"), "listed once"),
                       ("log.every_n_steps=0", "log.every_n_steps")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, [bad])
    # every [log] key may change on --resume; other keys still may not
    saved, new = {"log": {"backends": []}}, {"log": {"backends": ["mlflow"], "dir": "x"}}
    assert _config_changes(saved, new) == []
    assert _config_changes({**saved, "train": {"lr": 1e-3}}, {**new, "train": {"lr": 1e-2}}) == [
        "train.lr"]


class _DeviceLoss:
    """A stand-in for a loss tensor on a GPU: adding keeps it lazy, ``float`` is the host
    synchronisation, counted."""

    conversions = 0

    def __init__(self, value: float):
        self.value = value

    def detach(self) -> _DeviceLoss:
        return self

    def __add__(self, other) -> _DeviceLoss:
        return _DeviceLoss(self.value + (other.value if isinstance(other, _DeviceLoss) else other))

    __radd__ = __add__

    def __float__(self) -> float:
        _DeviceLoss.conversions += 1
        return self.value


def test_steps_convert_the_loss_only_at_logging_steps(tmp_path):
    class Recorder(Tracker):
        points: list = []

        def log_scalars(self, values, step):
            self.points.append((step, values))

    cfg = load_config(None, ["log.every_n_steps=4"])
    tracking = Tracking(cfg.log, tmp_path, cfg, [Recorder(cfg.log, tmp_path)])
    for step in range(1, 11):
        tracking.step(step, _DeviceLoss(10.0 * step), 5, 0.5, _DeviceLoss(0.7), 1e-3)
    assert _DeviceLoss.conversions == 2 * 2  # the loss and τ, at steps 4 and 8 only
    (s4, v4), (s8, v8) = Recorder.points
    assert (s4, s8) == (4, 8)
    assert v4 == {"train/loss": (10 + 20 + 30 + 40) / 20, "train/beta": 0.5,
                  "train/temperature": 0.7, "train/lr": 1e-3}
    assert v8["train/loss"] == (50 + 60 + 70 + 80) / 20


def test_an_experiment_name_mlflow_cannot_look_up_is_one_line(tiny_cfg_overrides, tmp_path,
                                                              error_line):
    """Issue 28, item 15: MLflow's file store looks an experiment up by a filter it writes
    unquoted (``name = '...'``), so a name with ``'`` cannot be created or found: refused in one
    line naming the key, before anything is written. Other quotes and backslashes work, with the
    real file store."""
    out = tmp_path / "run"
    sets = _sets([*tiny_cfg_overrides, _backends("mlflow"), "log.experiment=\"it's\""])
    assert main(["train", "--out", str(out), *sets]) == 2
    line = error_line()
    assert "log.experiment" in line and "it's" in line and "'" in line
    assert not out.exists()

    name = 'a "quoted" \\ name, 100%'
    train(_cfg(tiny_cfg_overrides, _backends("mlflow"), f"log.experiment={json.dumps(name)}",
               "train.epochs=1"), out)
    client, run_id = _mlflow(out)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None and experiment.name == name
    assert client.get_run(run_id).info.experiment_id == experiment.experiment_id
