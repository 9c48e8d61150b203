r"""``vaelab compare``: any set of run folders as one table, cells × metrics over seeds.

Run folders (a folder with ``config.toml`` and ``checkpoints/``) are found under the paths given,
recursively (a sweep folder, a ``reproduce`` folder, a folder of runs; a folder reached twice,
through symbolic links, is walked once), and grouped into **cells**: runs whose saved configs
are equal once :data:`IGNORED_KEYS` (the seed, threads, device, progress bars, ``[log]``) are
set aside. The config keys whose values differ between
cells are the cell label (a component's name, and its options only where they differ between
cells with that name). Each saved config is read as it meant when it was saved
(:func:`vaelab.resolve.resolve` with ``saved=True``): an older config's keys are upgraded and its
old defaults filled in before runs are grouped, and a run saved by a newer vaelab is left out,
in one line naming it.

Per run, the metrics are

* ``best_valid_elbo``: the highest validation ELBO of ``metrics.jsonl`` (nats per point);
* ``final_train_loss``: the last epoch's training loss (−ELBO per point) in ``metrics.jsonl``;
* every number in ``eval.json`` (written by ``vaelab train --evaluate`` and ``vaelab evaluate
  --report``: ``log_likelihood``, ``elbo``, ``ess_mean``, ``num_flagged``, ...; nested tables
  flattened as ``ess.median``), scored on the run's ``[eval]`` split.

Per cell and metric (:func:`vaelab.runs.stats.stat`): the mean over the runs that have it, the
standard deviation :math:`s = \sqrt{\sum_i (x_i - \bar x)^2 / (n - 1)}`, the standard error
:math:`s / \sqrt n` and :math:`n` (sd and se need :math:`n \ge 2`).

Example::

    vaelab compare runs/sweep --metric best_valid_elbo --metric log_likelihood \
        --csv table.csv --plots plots/
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.runs.stats import Stat, stat

# Stat and stat (vaelab.runs.stats, shared with vaelab reproduce's tables) are named here too
__all__ = [
    "DEFAULT_METRICS",
    "IGNORED_KEYS",
    "Comparison",
    "NewerRun",
    "RunRecord",
    "Stat",
    "compare",
    "find_runs",
    "format_number",
    "read_run",
    "stat",
]

#: config keys that do not make two runs different cells (``section.*``: a whole section)
IGNORED_KEYS = ("version", "train.seed", "train.num_threads", "train.progress", "train.device",
                "log.*")
#: shown when no ``--metric`` is given (each where some run has it)
DEFAULT_METRICS = ("best_valid_elbo", "final_train_loss", "log_likelihood", "elbo",
                   "exact_log_likelihood")
STAT_COLUMNS = ("mean", "sd", "se", "n")


def _ignored(key: str) -> bool:
    return any(key == k or (k.endswith(".*") and key.startswith(k[:-1])) for k in IGNORED_KEYS)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def is_run_folder(path: Path) -> bool:
    return (path / "config.toml").is_file() and (path / "checkpoints").is_dir()


def find_runs(paths: list[str | Path]) -> list[Path]:
    """The run folders at or under ``paths`` (not below a run folder), sorted, each once.

    Symbolic links to folders are followed, but every folder is entered once (by its real
    path), so links that loop end the walk instead of repeating it.

    :raises FileNotFoundError: a path that does not exist.
    """
    found: dict[str, Path] = {}
    seen: set[str] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist")
        stack = [p]
        while stack:
            d = stack.pop()
            real = os.path.realpath(d)
            if real in seen:
                continue
            seen.add(real)
            if is_run_folder(d):
                found.setdefault(real, d)
                continue
            try:
                children = sorted(d.iterdir(), reverse=True)
            except OSError:  # unreadable, or gone while walking
                continue
            stack.extend(c for c in children if c.is_dir() and not c.name.startswith("."))
    return sorted(found.values())


@dataclass
class RunRecord:
    """One run folder: its flattened saved config, its per-epoch rows and its metrics."""

    dir: Path
    config: dict[str, Any]
    history: list[dict]
    metrics: dict[str, float]

    @property
    def seed(self) -> Any:
        return self.config.get("train.seed")

    def identity(self) -> tuple:
        """The config without :data:`IGNORED_KEYS`: equal for the runs of one cell."""
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in self.config.items()
                            if not _ignored(k)))


class NewerRun(ValueError):
    """A run folder saved by a newer vaelab: its config version is above this one's."""


def _meaning(run_dir: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A saved config as the current version says what it meant
    (:func:`vaelab.resolve.resolve`, ``saved=True``: old keys upgraded, old defaults filled in,
    every key present). A config that does not resolve here (a plugin's component that is not
    importable) is tabled as saved, upgraded (:func:`vaelab.resolve.migrate`), with a note.

    :raises NewerRun: the config's version is newer than this vaelab's.
    """
    from vaelab.config import CONFIG_VERSION, to_dict
    from vaelab.notes import note
    from vaelab.registry import ConfigError
    from vaelab.resolve import migrate, resolve

    version = raw.get("version", 1)
    if isinstance(version, int) and version > CONFIG_VERSION:
        raise NewerRun(f"{str(run_dir)!r} was saved by a newer vaelab (config version "
                       f"{version}; this one reads up to {CONFIG_VERSION}): left out of the "
                       "table; upgrade vaelab to compare it")
    try:
        return to_dict(resolve(raw, saved=True))
    except ConfigError as err:
        note(f"{str(run_dir)!r}: its config does not resolve here ({err}); tabled as saved")
    try:
        return migrate(raw)
    except ConfigError:
        return raw


def read_run(run_dir: Path) -> RunRecord:
    """The config (as it meant when it was saved), ``metrics.jsonl`` and ``eval.json`` of a run
    folder as a :class:`RunRecord`.

    :raises NewerRun: the run was saved by a newer vaelab.
    """
    import tomllib

    from vaelab.runs.checkpoint import read_metrics

    try:
        raw = tomllib.loads((run_dir / "config.toml").read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(run_dir / 'config.toml')!r} is not valid TOML: {err}") from None
    config = _flatten(_meaning(run_dir, raw))
    try:
        history = read_metrics(run_dir)
    except ValueError as err:
        raise ValueError(f"{str(run_dir / 'metrics.jsonl')!r} is damaged: {err}") from None
    metrics: dict[str, float] = {}
    valid = [v for v in (_number(r.get("valid_elbo")) for r in history) if v is not None]
    if valid:
        metrics["best_valid_elbo"] = max(valid)
    last = _number(history[-1].get("train_loss")) if history else None
    if last is not None:
        metrics["final_train_loss"] = last
    from vaelab.runs.run import read_eval  # names a damaged eval.json in one line

    saved = read_eval(run_dir)
    if saved is not None:
        for k, v in _flatten(saved).items():
            if _number(v) is not None and k not in metrics:
                metrics[k] = _number(v)  # type: ignore[assignment]
    return RunRecord(run_dir, config, history, metrics)


def format_number(v: float | int | None) -> str:
    """How the Markdown table writes a number: 4 significant digits, trailing zeros kept (one
    decimal from 1000 on), ``—`` for none."""
    if v is None:
        return "—"
    if isinstance(v, int):
        return str(v)
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:#.4g}"


def _label_keys(cells: list[list[RunRecord]]) -> list[str]:
    """The config keys (without :data:`IGNORED_KEYS`) whose values differ between cells; a
    component's options only where they differ between cells with the same component name."""
    firsts = [c[0].config for c in cells]
    keys = sorted({k for cfg in firsts for k in cfg if not _ignored(k)})

    def values(k: str, among=firsts) -> set[str]:
        return {json.dumps(cfg.get(k), sort_keys=True) for cfg in among}

    differ = [k for k in keys if len(values(k)) > 1]
    out = []
    for k in differ:
        parent = k.rsplit(".", 1)[0]
        name_key = f"{parent}.name"
        if k != name_key and name_key in differ and parent.count(".") >= 1:
            by_name: dict[str, list[dict]] = {}
            for cfg in firsts:
                by_name.setdefault(json.dumps(cfg.get(name_key)), []).append(cfg)
            if all(len(values(k, group)) == 1 for group in by_name.values()):
                continue  # differs only because the component differs
        out.append(k)
    return _distinct(out, cells)


def _distinct(keys: list[str], cells: list[list[RunRecord]]) -> list[str]:
    """``keys`` less those that repeat another's values cell for cell (a resolved config holds
    the MLP widths in ``model.hidden_sizes``, ``model.decoder.hidden_sizes``, ...): the key
    with the fewest parts, the earliest section, is kept; in section order."""
    from vaelab.config import SECTIONS

    def section(k: str) -> int:
        head = k.split(".")[0]
        return SECTIONS.index(head) if head in SECTIONS else len(SECTIONS)

    kept: dict[tuple, str] = {}
    for k in sorted(keys, key=lambda k: (k.count("."), section(k), k)):
        kept.setdefault(tuple(json.dumps(c[0].config.get(k)) for c in cells), k)
    return sorted(kept.values(), key=lambda k: (section(k), _column(k)))


def _column(key: str) -> str:
    """A component's name column is the component's key (``model.prior.name`` →
    ``model.prior``); a section's own ``name`` (``objective.name``) stays."""
    return key[: -len(".name")] if key.endswith(".name") and key.count(".") >= 2 else key


def _show(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return json.dumps(v)


@dataclass
class Comparison:
    """The cells of a set of runs and their statistics (:func:`compare`)."""

    cells: list[list[RunRecord]]
    label_keys: list[str]
    metrics: list[str]
    stats: list[dict[str, Stat]] = field(default_factory=list)

    def label(self, i: int) -> dict[str, str]:
        """Cell ``i``'s label: ``{column: value}`` for the keys that differ between cells."""
        cfg = self.cells[i][0].config
        return {_column(k): _show(cfg.get(k)) for k in self.label_keys}

    def label_text(self, i: int) -> str:
        """Cell ``i``'s label values, comma-separated (the run folder's parent for one cell)."""
        return ", ".join(self.label(i).values()) or str(self.cells[i][0].dir.parent)

    def header(self) -> list[str]:
        return [*(_column(k) for k in self.label_keys), "seeds", "epochs",
                *(f"{m} {s}" for m in self.metrics for s in STAT_COLUMNS)]

    def _epochs(self, runs: list[RunRecord]) -> str:
        e = sorted(len(r.history) for r in runs)
        return str(e[0]) if e[0] == e[-1] else f"{e[0]}–{e[-1]}"

    def rows(self, fmt=format_number) -> list[list[str]]:
        """One row per cell, in :meth:`header`'s order; numbers written by ``fmt``."""
        out = []
        for i, runs in enumerate(self.cells):
            row = [*self.label(i).values(), " ".join(str(r.seed) for r in runs),
                   self._epochs(runs)]
            for m in self.metrics:
                s = self.stats[i][m]
                row += [fmt(s.mean), fmt(s.sd), fmt(s.se), str(s.n)]
            out.append(row)
        return out

    def markdown(self) -> str:
        """The table in Markdown (numbers: :func:`format_number`)."""
        header = self.header()
        align = ["---"] * (len(header) - 4 * len(self.metrics)) + ["---:"] * (4 * len(self.metrics))
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows()]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | Path) -> Path:
        """The table as CSV, numbers at full precision (empty for none), and a last column
        ``runs`` with the run folders."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*self.header(), "runs"])
            for runs, row in zip(self.cells, self.rows(lambda v: "" if v is None else repr(v))):
                w.writerow([*row, " ".join(str(r.dir) for r in runs)])
        return path

    def plots(self, folder: str | Path) -> list[Path]:
        """``curves.png`` (validation ELBO per epoch, one line per cell: the mean over its
        runs, a band of ± one standard deviation) and ``metrics.png`` (each metric by cell:
        mean ± standard error, the runs as dots) in ``folder``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for i, runs in enumerate(self.cells):
            epochs = max(len(r.history) for r in runs)
            xs, mean, lo, hi = [], [], [], []
            for e in range(epochs):
                vals = [v for r in runs if e < len(r.history)
                        if (v := _number(r.history[e].get("valid_elbo"))) is not None]
                if not vals:
                    continue
                s = stat(vals)
                assert s.mean is not None  # vals is not empty
                xs.append(e + 1)
                mean.append(s.mean)
                lo.append(s.mean - (s.sd or 0.0))
                hi.append(s.mean + (s.sd or 0.0))
            line, = ax.plot(xs, mean, label=f"{self.label_text(i)} (n={len(runs)})")
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation ELBO (nats per point)")
        ax.set_title("mean over seeds, band: ± 1 sd")
        ax.legend(fontsize=7, title=", ".join(map(_column, self.label_keys)) or None,
                  title_fontsize=7)
        fig.tight_layout()
        paths = [folder / "curves.png"]
        fig.savefig(paths[0], dpi=120)
        plt.close(fig)

        k = len(self.metrics)
        fig, axes = plt.subplots(1, k, figsize=(max(4.0, 1.2 * len(self.cells)) * k, 4),
                                 squeeze=False)
        xs = list(range(len(self.cells)))
        for ax, m in zip(axes[0], self.metrics):
            st = [self.stats[i][m] for i in xs]
            shown = [i for i in xs if st[i].mean is not None]
            ax.errorbar(shown, [st[i].mean for i in shown], [st[i].se or 0.0 for i in shown],
                        fmt="o", capsize=4, label="mean ± se")
            for i in shown:
                vals = [r.metrics[m] for r in self.cells[i] if m in r.metrics]
                ax.plot([i] * len(vals), vals, ".", c="gray", alpha=0.6)
            ax.set_xticks(xs, [self.label_text(i) for i in xs], rotation=30, ha="right",
                          fontsize=7)
            ax.set_xlim(-0.5, len(xs) - 0.5)
            ax.set_xlabel(", ".join(map(_column, self.label_keys)), fontsize=8)
            ax.set_title(m)
        fig.tight_layout()
        paths.append(folder / "metrics.png")
        fig.savefig(paths[1], dpi=120)
        plt.close(fig)
        return paths


def compare(paths: list[str | Path], metrics: list[str] | None = None) -> Comparison:
    """Gather the run folders under ``paths`` into cells and their statistics.

    :param metrics: the metrics to table (default: those of :data:`DEFAULT_METRICS` that some
        run has).
    :raises FileNotFoundError: a path that does not exist, or no run folder under the paths.
    :raises ValueError: a metric no run has (the message lists those there are), or every run
        was saved by a newer vaelab (a run that was is left out, with a note naming it).
    """
    from vaelab.notes import note

    dirs = find_runs(paths)
    if not dirs:
        raise FileNotFoundError(f"no run folder (config.toml and checkpoints/) under "
                                f"{', '.join(repr(str(p)) for p in paths)}")
    groups: dict[tuple, list[RunRecord]] = {}
    newer: list[str] = []
    for d in dirs:
        try:
            rec = read_run(d)
        except NewerRun as err:
            newer.append(str(err))
            continue
        groups.setdefault(rec.identity(), []).append(rec)
    if not groups:
        raise ValueError(newer[0])
    for message in newer:
        note(message)
    cells = [sorted(runs, key=lambda r: (str(type(r.seed)), r.seed)) for runs in groups.values()]
    have = {m for runs in cells for r in runs for m in r.metrics}
    if metrics:
        missing = [m for m in metrics if m not in have]
        if missing:
            raise ValueError(f"--metric {missing[0]!r}: no run has it; metrics there are: "
                             f"{', '.join(sorted(have))}")
    else:
        metrics = [m for m in DEFAULT_METRICS if m in have]
    comp = Comparison(cells, _label_keys(cells), list(metrics))
    comp.stats = [{m: stat([r.metrics[m] for r in runs if m in r.metrics]) for m in metrics}
                  for runs in cells]
    return comp
