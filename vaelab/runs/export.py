"""The small files of an exported run, one format for every tool that exports one.

An exported run is a folder of ``config.toml`` (the resolved config), ``metrics.jsonl``,
``result.json`` (with ``format_version`` = :data:`EXPORT_FORMAT`, no machine path) and
:data:`POINTS_FILE`, the IS log p̂(x) and ELBO per test point with 4 decimals; no checkpoint.
:func:`write_export` writes one and refuses a machine path; :func:`read_points` reads the
per-point values back. ``vaelab reproduce --export`` (:func:`vaelab.runs.tables.export_runs`)
and ``experiments/compare_latents.py`` write their runs through it, so the table builders read
both the same way.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import torch

__all__ = ["EXPORT_FORMAT", "POINTS_FILE", "machine_paths", "points_tsv", "read_points",
           "write_export"]

#: the version of an exported run's files
EXPORT_FORMAT = 1
#: an exported run's IS per test point: ``point``, ``log_px``, ``elbo`` (4 decimals)
POINTS_FILE = "is_points.tsv"


def machine_paths(obj, where: str) -> list[str]:
    """The strings of ``obj`` (nested) that name a place on a machine (an absolute or home
    path), each as ``where: value``."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in machine_paths(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [p for v in obj for p in machine_paths(v, where)]
    if isinstance(obj, str) and any(obj.startswith(a) or f"={a}" in obj for a in ("/", "~")):
        return [f"{where}: {obj!r}"]
    return []


def points_tsv(result: dict, log_px: torch.Tensor, elbo: torch.Tensor) -> str:
    """:data:`POINTS_FILE`: a comment line (the format and what was scored), a header, one line
    per test point with 4 decimals. ``result["is_points"]`` names the split and limit,
    ``result["is"]["num_samples"]`` the K."""
    spec, k = result["is_points"], result["is"]["num_samples"]
    head = (f"# vaelab reproduce export, format {EXPORT_FORMAT}: IS with K = {k} per point of "
            f"the {spec['split']} split (limit {spec['limit']}), nats\n"
            "point\tlog_px\telbo\n")
    return head + "".join(f"{i}\t{a:.4f}\t{b:.4f}\n"
                          for i, (a, b) in enumerate(zip(log_px.tolist(), elbo.tolist())))


def write_export(target: Path, run_dir: Path, result: dict, log_px: torch.Tensor,
                 elbo: torch.Tensor) -> Path:
    """Write the run folder ``run_dir``'s config and metrics, ``result`` (JSON-ready, with
    ``format_version`` and ``is_points``) and its per-point values to ``target``.

    :raises ValueError: a file would carry a machine path (named, in one line)."""
    config = (run_dir / "config.toml").read_text()
    metrics = (run_dir / "metrics.jsonl").read_text()
    found = (machine_paths(result, "result.json")
             + machine_paths(tomllib.loads(config), "config.toml")
             + [p for ln in metrics.splitlines() if ln
                for p in machine_paths(json.loads(ln), "metrics.jsonl")])
    if found:
        raise ValueError(f"{run_dir}: would export a machine path, {found[0]}")
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.toml").write_text(config)
    (target / "metrics.jsonl").write_text(metrics)
    (target / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    (target / POINTS_FILE).write_text(points_tsv(result, log_px, elbo))
    return target


def read_points(result: dict) -> tuple[dict, torch.Tensor, torch.Tensor] | None:
    """An exported run's IS per point (``result["_dir"]`` its folder): (the points scored,
    ``split`` and ``limit``; log p̂(x) and the ELBO, ``(N,)`` float64 each, as the TSV holds
    them); None without an IS stage or its TSV."""
    path = Path(result["_dir"]) / POINTS_FILE
    if "is" not in result or not path.is_file():
        return None
    rows = [ln.split("\t") for ln in path.read_text().splitlines()[2:] if ln]
    log_px = torch.tensor([float(r[1]) for r in rows], dtype=torch.float64)
    elbo = torch.tensor([float(r[2]) for r in rows], dtype=torch.float64)
    spec = result["is_points"]
    return {"split": spec["split"], "limit": spec["limit"]}, log_px, elbo
