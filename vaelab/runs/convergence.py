"""How converged each row of the reproducibility table is: the lines under the table from each
run's ``convergence.json``.

``experiments/convergence.py`` measures, for a run that ``vaelab reproduce`` evaluated, IS with
K = 5000 against K = 100,000 on the same draws and AIS at T = 500, 2000, 8000 on the same spread
test images, each paired image by image, and writes :data:`CONVERGENCE_FILE` into the run's
``reproduce/`` folder; ``vaelab reproduce --export`` copies it beside the run's ``result.json``
(:func:`vaelab.runs.tables.export_runs`), and :func:`convergence_table` lists it under the table.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["CONVERGENCE_FILE", "convergence_table"]

#: a run's convergence checks, written by ``experiments/convergence.py`` into ``RUN/reproduce/``
#: and exported beside ``result.json``
CONVERGENCE_FILE = "convergence.json"


def _convergence(r: dict) -> dict | None:
    """A run's :data:`CONVERGENCE_FILE` (``experiments/convergence.py``), exported beside its
    ``result.json`` or in its run folder's ``reproduce/``; None where it was not measured."""
    for path in (Path(r["_dir"]) / CONVERGENCE_FILE,
                 Path(r["_dir"]) / "reproduce" / CONVERGENCE_FILE):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _gain(g: dict) -> str:
    return f"{g['mean']:+.2f} ± {g['stderr']:.2f}"


def convergence_table(groups: dict[tuple[str, str], list[dict]]) -> str:
    """One line per run that has a :data:`CONVERGENCE_FILE`: how far its IS figure rose with
    more draws on the same draws' first K, the AIS figure per T with each T's paired gain, and
    AIS at the largest T minus IS at the largest K; empty when no run has one."""
    lines = ["| recipe | variant | seed | points | IS: gain from K = 5000 to the largest K "
             "(paired) | AIS by T (paired gain over the previous T) | AIS (largest T) − IS "
             "(largest K) |", "|---|---|---:|---:|---|---|---:|"]
    for (name, variant), rs in groups.items():
        for r in sorted(rs, key=lambda r: r["seed"]):
            c = _convergence(r)
            if c is None:
                continue
            ks = c["is"]["num_samples"]
            k_max = max(ks, key=int)
            gains = [f"K = {k} → {k_max}: {_gain(v[f'gain_to_{k_max}'])}"
                     for k, v in sorted(ks.items(), key=lambda kv: int(kv[0]))
                     if f"gain_to_{k_max}" in v]
            ais = c.get("ais")
            steps = [f"T = {T}: {row['log_likelihood']:.2f}"
                     + "".join(f" ({_gain(v)})" for k, v in row.items()
                               if k.startswith("gain_from_T"))
                     for T, row in (ais or {}).get("steps", {}).items()]
            ais_cell = (f"from the {ais['base']}, {ais['chains']} chains: " + "; ".join(steps)
                        if ais else "n/a")
            last = _gain(c["ais_minus_is"]) if "ais_minus_is" in c else "n/a"
            lines.append(f"| {name} | {variant} | {r['seed']} | {c['points']} | "
                         f"{'; '.join(gains) or 'n/a'} | {ais_cell} | {last} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""
