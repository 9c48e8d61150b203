r"""Experiment tracking: TensorBoard and MLflow, optional extras chosen in ``[log]``.

``log.backends = ["tensorboard", "mlflow"]`` (or ``--set 'log.backends=["tensorboard"]'``)
turns on one :class:`Tracker` per backend, each writing with its library's own writer:
:class:`torch.utils.tensorboard.SummaryWriter` into ``DIR/tb``, and
:class:`mlflow.tracking.MlflowClient` on a local file store (tracking URI ``file:DIR/mlruns``).
:class:`Tracking` drives them; it logs, at the global step ``t`` (steps done so far):

* every ``log.every_n_steps`` steps, ``train/loss`` — the mean loss per point over the steps
  since the last point, :math:`\sum_s \mathcal{L}_s / \sum_s B_s` — and ``train/beta``,
  ``train/temperature`` (τ of relaxed latents) and ``train/lr`` of the step. The sum is kept
  as it comes (a float, or a detached tensor that stays on its device): nothing is converted
  between logging steps, so a GPU run pays no per-step host synchronisation for tracking;
* after each committed epoch, ``epoch/train_loss``, ``epoch/valid_elbo``, ``epoch/valid_bound``
  (where the run has one), ``epoch/epoch_time`` (the row of ``metrics.jsonl``) at the epoch's
  last step;
* the resolved config flattened to dotted keys (``model.prior.name``) as hyperparameters
  (TensorBoard's HParams, MLflow params);
* after ``vaelab evaluate`` / ``train --evaluate`` (:meth:`Tracking.log_results`), the numbers
  of the evaluation summary as ``eval/SPLIT/KEY`` (``eval/test/log_likelihood``,
  ``eval/test/ess/median``, ``eval/test/pareto_k/max``, ...) and the run folder's PNGs as
  images (``report/NAME``) / artifacts (``report/NAME.png``), at the evaluated checkpoint's step.

**Resume** continues the same log: TensorBoard reopens the same folder with ``purge_step`` =
the committed step + 1, so points an interrupted process logged after its last commit are
hidden; MLflow continues the run named in ``DIR/mlflow_run_id`` (written atomically). Its
points past the last commit stay, and the resumed run logs the same (step, value) pairs again
(resume is exact). MLflow params cannot change: a ``--resume`` that changes a key (only
:data:`~vaelab.runs.resume.RESUMABLE_KEYS` may) records the new value as a tag of that name.
A fresh run that fails before its first commit removes what it logged, like the rest of its
folder.

Only the process that writes the run folder (the holder of its lock, in
:func:`vaelab.runs.train.train`) opens a tracker for training. The libraries are imported
only when a backend is on; a missing one is a :class:`~vaelab.registry.ConfigError` naming the
``pip install`` to run.

.. note:: MLflow 3 keeps its file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``;
    opening the ``mlflow`` backend sets that variable to ``true`` unless it is set. The store
    is a plain folder inside the run folder (or ``log.dir``), readable by
    ``MlflowClient("file:DIR/mlruns")`` and ``mlflow ui --backend-store-uri DIR/mlruns``.

Example::

    cfg = load_config("c.toml", ['log.backends=["tensorboard", "mlflow"]', "log.every_n_steps=10"])
    result = train(cfg, "runs/demo")                  # tensorboard --logdir runs/demo/tb
    run = result.run("best")
    log_results(run, evaluate(run).summary())         # log p(x), ESS, k̂ and the PNGs
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaelab.config import LogConfig, RunConfig, to_dict
from vaelab.notes import note
from vaelab.registry import ConfigError
from vaelab.runs.checkpoint import atomic_write_text, read_metrics
from vaelab.runs.folder import Interrupted

if TYPE_CHECKING:
    from vaelab.runs.folder import Commit
    from vaelab.runs.run import Run

__all__ = [
    "BACKENDS",
    "MLflowTracker",
    "RUN_ID_FILE",
    "TensorBoardTracker",
    "Tracker",
    "Tracking",
    "flatten_config",
    "log_results",
]

#: the file of the run folder naming its MLflow run
RUN_ID_FILE = "mlflow_run_id"
#: the columns of ``metrics.jsonl`` logged after each epoch, as ``epoch/KEY``
EPOCH_KEYS = ("train_loss", "valid_elbo", "valid_bound", "epoch_time")
#: the scalars TensorBoard's HParams dashboard shows beside the hyperparameters
HPARAM_METRICS = ("epoch/valid_elbo", "epoch/train_loss")


def _missing(backend: str, package: str) -> ConfigError:
    return ConfigError(
        f"log.backends: {backend!r} needs the {package} package, which is not installed; "
        f"pip install 'vaelab[{backend}]' (or: pip install {package})"
    )


def flatten_config(cfg: RunConfig) -> dict[str, bool | int | float | str]:
    """The resolved config as ``{dotted key: value}``, components flattened
    (``model.prior.name``); lists and ``None`` become their JSON text (``[16]``, ``null``).

    :param cfg: a resolved :class:`~vaelab.config.RunConfig`.
    :returns: hyperparameters for TensorBoard's HParams and MLflow params.
    """
    out: dict[str, bool | int | float | str] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float, str)):
                out[prefix + key] = value
            else:
                out[prefix + key] = json.dumps(value)

    walk(to_dict(cfg), "")
    return out


def _numbers(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a (nested) summary as ``{prefix + "a/b": value}``; booleans,
    text and the IS convergence curve are left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and key != "curve":
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                out[prefix + key] = float(value)
    return out


def _text(value: bool | int | float | str) -> str:
    """A hyperparameter as MLflow stores it: TOML/JSON spelling (``true``, ``0.001``)."""
    return value if isinstance(value, str) else json.dumps(value)


# --------------------------------------------------------------------------------------------
# one writer per backend


class Tracker:
    """One backend's writer, driven by :class:`Tracking`.

    A tracker is made (its library imported) before anything is written, opened for training
    or for logging results, and closed. Subclasses log with their library's own API.

    :param log: the ``[log]`` section.
    :param out: the run folder.
    :raises ConfigError: the backend's library is not installed.
    """

    #: the name in ``log.backends`` (and of the extra that installs the library)
    name = ""

    def __init__(self, log: LogConfig, out: Path):
        self.log, self.out = log, out

    def open(self, purge_step: int | None) -> None:
        """Start writing; ``purge_step`` (training only): hide points logged at steps ≥ it."""

    def log_params(self, params: dict[str, bool | int | float | str]) -> None:
        """The run's hyperparameters (see :func:`flatten_config`)."""

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars named by tag, at global step ``step``."""

    def log_images(self, paths: list[Path], step: int) -> None:
        """PNG files, as images or artifacts named after the file."""

    def flush(self) -> None:
        """Make what was logged visible to readers."""

    def close(self, status: str | None) -> None:
        """Stop writing; ``status``: how training ended (``FINISHED``, ``FAILED``,
        ``KILLED``), ``None`` when only results were logged."""

    def discard(self) -> None:
        """Close and remove what this tracker created (a fresh run that never committed)."""


def _run_name(out: Path) -> str:
    return out.resolve().name


class TensorBoardTracker(Tracker):
    """:class:`torch.utils.tensorboard.SummaryWriter` into ``DIR/tb`` (``log.dir/tb/RUN`` when
    ``log.dir`` is set, so that ``tensorboard --logdir LOG_DIR/tb`` compares runs)."""

    name = "tensorboard"

    def __init__(self, log: LogConfig, out: Path):
        super().__init__(log, out)
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self._writer_type, self._hparams = SummaryWriter, hparams
        root = out if log.dir is None else Path(log.dir).expanduser()
        self.dir = root / "tb" if log.dir is None else root / "tb" / _run_name(out)
        self.writer: Any = None
        self._created = False

    def open(self, purge_step: int | None) -> None:
        self._created = not self.dir.exists()
        self.writer = self._writer_type(log_dir=str(self.dir), purge_step=purge_step,
                                        flush_secs=30)

    def log_params(self, params: dict[str, bool | int | float | str]) -> None:
        # the HParams plugin's three summaries, as SummaryWriter.add_hparams makes them, written
        # into this run's own event file (add_hparams would open a second run folder)
        # (booleans as text: torch would store True as the number 1)
        hparams = {k: _text(v) if isinstance(v, bool) else v for k, v in params.items()}
        metrics = {tag: 0.0 for tag in HPARAM_METRICS}
        for summary in self._hparams(hparams, metrics):
            self.writer.file_writer.add_summary(summary)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_images(self, paths: list[Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
            self.writer.add_image(f"report/{path.stem}", pixels, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self, status: str | None) -> None:
        if self.writer is not None:
            self.writer.close()

    def discard(self) -> None:
        self.close(None)
        if self._created:
            shutil.rmtree(self.dir, ignore_errors=True)


class MLflowTracker(Tracker):
    """:class:`mlflow.tracking.MlflowClient` on the file store ``DIR/mlruns`` (``log.dir/mlruns``
    when set), in experiment ``log.experiment``; one MLflow run per run folder, named after it
    and recorded in ``DIR/mlflow_run_id``. The client is used without MLflow's global active
    run, so nothing leaks into other code of the process."""

    name = "mlflow"

    def __init__(self, log: LogConfig, out: Path):
        super().__init__(log, out)
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow-skinny") from None
        if "'" in log.experiment:
            # the file store finds (and, before creating, checks) an experiment by the filter
            # name = '<name>', the name written unquoted: a ' ends the string early
            raise ConfigError(
                f"log.experiment: {log.experiment!r} holds a ' (single quote), which MLflow's "
                "file store cannot look up; choose a name without it")
        self._client_type, self._error = MlflowClient, MlflowException
        self._metric, self._param, self._tag = Metric, Param, RunTag
        root = out if log.dir is None else Path(log.dir).expanduser()
        self.store = root / "mlruns"
        self.id_file = out / RUN_ID_FILE
        self.client: Any = None
        self.run_id = ""
        self._created_store = self._created_run = False

    def open(self, purge_step: int | None) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module's note
        self._created_store = not self.store.exists()
        self.client = self._client_type(tracking_uri=self.store.resolve().as_uri())
        experiment = self.client.get_experiment_by_name(self.log.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.log.experiment))
        self.run_id = self._recorded_run()
        self._created_run = not self.run_id
        if self._created_run:
            run = self.client.create_run(experiment_id, run_name=_run_name(self.out),
                                         tags={"vaelab.run_dir": str(self.out.resolve())})
            self.run_id = run.info.run_id
            atomic_write_text(self.id_file, self.run_id + "\n")
        elif purge_step is not None:
            self.client.update_run(self.run_id, status="RUNNING")

    def _recorded_run(self) -> str:
        """The run named in ``DIR/mlflow_run_id`` when the store holds it (not deleted), else ""."""
        if not self.id_file.is_file():
            return ""
        run_id = self.id_file.read_text().strip()
        try:
            run = self.client.get_run(run_id)
        except self._error:
            run = None
        if run is None or run.info.lifecycle_stage != "active":
            note(f"the MLflow run {run_id} named in {str(self.id_file)!r} is not in "
                 f"{str(self.store)!r}; logging to a new run")
            return ""
        return run_id

    def log_params(self, params: dict[str, bool | int | float | str]) -> None:
        have = self.client.get_run(self.run_id).data.params
        new = [self._param(k, _text(v)) for k, v in params.items() if k not in have]
        changed = [self._tag(k, _text(v)) for k, v in params.items()
                   if k in have and have[k] != _text(v)]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=new[i : i + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_images(self, paths: list[Path], step: int) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="report")

    def close(self, status: str | None) -> None:
        if status is not None and self.client is not None:
            self.client.set_terminated(self.run_id, status)

    def discard(self) -> None:
        if self._created_run and self.client is not None:
            self.client.delete_run(self.run_id)
            self.id_file.unlink(missing_ok=True)
        if self._created_store:
            shutil.rmtree(self.store, ignore_errors=True)


#: ``log.backends`` names and their trackers
BACKENDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}


# --------------------------------------------------------------------------------------------


class Tracking:
    """The trackers of ``log.backends`` for one run folder: what training and the CLI call.

    With no backend every method returns at once. Make it with :meth:`for_run` before loading
    anything (a missing library fails there), then open it with :meth:`training` or call
    :meth:`log_results`.

    :param log: the ``[log]`` section.
    :param out: the run folder.
    :param cfg: the resolved config, logged as hyperparameters.
    :param trackers: one :class:`Tracker` per backend.
    """

    def __init__(self, log: LogConfig, out: Path, cfg: RunConfig, trackers: list[Tracker]):
        self.log, self.out, self.cfg, self.trackers = log, out, cfg, trackers
        self._loss: Any = 0.0  # sum of step losses since the last point: float or tensor
        self._points = 0
        self._committed = False

    @classmethod
    def for_run(cls, cfg: RunConfig, out: str | Path) -> Tracking:
        """The trackers ``cfg.log.backends`` names, for run folder ``out`` (nothing written).

        :raises ConfigError: a backend's library is not installed (one line naming the
            ``pip install``), or ``log.experiment`` holds a ``'``, which MLflow's file store
            cannot look up.
        """
        out = Path(out)
        return cls(cfg.log, out, cfg, [BACKENDS[name](cfg.log, out) for name in cfg.log.backends])

    def _open(self, purge_step: int | None) -> None:
        for tracker in self.trackers:
            tracker.open(purge_step)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_scalars(values, step)

    @contextmanager
    def training(self, saved: Commit | None) -> Iterator[Tracking]:
        """Open the trackers for training from ``saved`` (``None``: a fresh run), log the
        hyperparameters, and close them however training ends.

        Resuming hides, in TensorBoard, what was logged after the step of ``saved``. When a
        fresh run fails before its first commit (no :meth:`epoch` was logged), what the
        trackers created is removed.
        """
        if not self.trackers:
            yield self
            return
        start = 0 if saved is None else int(saved.state["step"])
        status = "FAILED"
        try:
            self._open(purge_step=start + 1)
            params = flatten_config(self.cfg)
            for tracker in self.trackers:
                tracker.log_params(params)
            yield self
            status = "FINISHED"
        except (Interrupted, KeyboardInterrupt):
            status = "KILLED"
            raise
        finally:
            discard = saved is None and not self._committed and status != "FINISHED"
            for tracker in self.trackers:
                if discard:
                    tracker.discard()
                else:
                    tracker.close(status)

    def step(self, step: int, loss: Any, points: int, beta: Any, temperature: Any = None,
             lr: float | None = None) -> None:
        """After a training step: add its loss; at every ``log.every_n_steps``-th step, log
        the mean loss per point since the last point, β, τ and the learning rate.

        :param step: the global step count after this step (1-based).
        :param loss: the step's loss summed over its points (a float or a scalar tensor,
            kept unconverted until a logging step).
        :param points: the points in the step's batch (B).
        :param beta: the step's KL weight β; ``temperature``: its τ (``None``: none).
        """
        if not self.trackers:
            return
        self._loss = self._loss + (loss.detach() if hasattr(loss, "detach") else loss)
        self._points += points
        if step % self.log.every_n_steps:
            return
        values = {"train/loss": float(self._loss) / self._points, "train/beta": float(beta)}
        if temperature is not None:
            values["train/temperature"] = float(temperature)
        if lr is not None:
            values["train/lr"] = float(lr)
        self._loss, self._points = 0.0, 0
        self._scalars(values, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """After an epoch's commit: its ``metrics.jsonl`` row as ``epoch/KEY`` at its last step."""
        self._committed = True
        if not self.trackers:
            return
        values = {f"epoch/{k}": float(row[k]) for k in EPOCH_KEYS if row.get(k) is not None}
        self._scalars({"epoch/epoch": float(row["epoch"]), **values}, int(row["step"]))
        for tracker in self.trackers:
            tracker.flush()

    def log_results(self, run: Run, metrics: dict[str, Any] | None = None, *,
                    images: bool = True) -> None:
        """Log an evaluation summary and the run folder's PNGs into the run's log.

        :param run: the evaluated run (its checkpoint's epoch gives the step logged at).
        :param metrics: :meth:`~vaelab.inference.marginal.MarginalEstimate.summary`, maybe
            with ``split`` (default: ``run.cfg.eval.split``); its numbers are logged as
            ``eval/SPLIT/KEY``.
        :param images: also log every ``*.png`` of the run folder (after the report is written).
        """
        if not self.trackers:
            return
        rows = read_metrics(self.out)
        step = int(rows[min(run.epoch, len(rows) - 1)]["step"]) if rows else 0
        pictures = sorted(self.out.glob("*.png")) if images else []
        try:
            self._open(purge_step=None)
            if metrics:
                split = metrics.get("split", run.cfg.eval.split)
                self._scalars(_numbers(metrics, f"eval/{split}/"), step)
            for tracker in self.trackers:
                tracker.log_images(pictures, step)
        finally:
            for tracker in self.trackers:
                tracker.close(None)


def log_results(run: Run, metrics: dict[str, Any] | None = None, *, images: bool = True) -> None:
    """:meth:`Tracking.log_results` with the run's own ``[log]`` section (a no-op when its
    ``log.backends`` is empty).

    Example::

        run = load_run("runs/demo")
        log_results(run, evaluate(run).summary())
    """
    Tracking.for_run(run.cfg, run.dir).log_results(run, metrics, images=images)
