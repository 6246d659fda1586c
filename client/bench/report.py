"""The results: one table row per measured metric, ``bench.json`` (every benchmark ever run
there, each with its machine and command), the markdown table, and the section of
docs/benchmarks.md between the bench markers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from client.bench.context import read_json

logger = logging.getLogger("bench")


DOCS_BEGIN = "<!-- bench:begin (written by ppa-bench; edit outside the markers) -->"


DOCS_END = "<!-- bench:end -->"


def row(
    metric: str,
    measured: float | None,
    *,
    target: str = "",
    met: bool | None = None,
    unit: str = "",
    note: str = "",
) -> dict[str, Any]:
    """One line of the results table."""
    return {
        "metric": metric,
        "measured": measured,
        "unit": unit,
        "target": target,
        "met": met,
        "note": note,
    }


def merge_results(
    path: Path,
    machine: dict[str, Any],
    command: str,
    results: Mapping[str, Any],
    order: Sequence[str],
) -> dict[str, Any]:
    """bench.json: earlier entries kept, this run's replace theirs; each entry keeps the
    machine and command it was measured with; benchmarks in `order` (the canonical one)."""
    data = read_json(path) or {"benchmarks": {}}
    for name, entry in results.items():
        data["benchmarks"][name] = {**entry, "machine": machine, "command": command}
    data["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    ordered = {n: data["benchmarks"][n] for n in order if n in data["benchmarks"]}
    data["benchmarks"] = ordered
    return data


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render_markdown(data: Mapping[str, Any]) -> str:
    """The results table (targets vs measured) and the machine(s) and commands behind it."""
    lines = [
        "| benchmark | metric | target | measured | met | notes |",
        "|---|---|---|---|---|---|",
    ]
    machines: dict[str, dict[str, Any]] = {}
    for name, entry in data.get("benchmarks", {}).items():
        for r in entry.get("rows", []):
            met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
            measured = _fmt(r.get("measured")) + (f" {r['unit']}" if r.get("unit") else "")
            lines.append(
                f"| {name} | {r['metric']} | {r.get('target', '')} | {measured} | {met} | "
                f"{r.get('note', '')} |"
            )
        machine = entry.get("machine", {})
        key = json.dumps(
            {k: machine.get(k) for k in ("cpu", "logical_cpus", "gpu", "git")}, sort_keys=True
        )
        when = entry.get("started", "?")
        load = entry.get("load_before", {})
        note = (
            f"{name}: {when}, {entry.get('seconds', 0):.0f} s, load "
            f"{load.get('1min', '?')} (1 min) before"
            + (", quick sizes" if entry.get("quick") else "")
        )
        machines.setdefault(key, {"machine": machine, "runs": [], "commands": set()})
        machines[key]["runs"].append(note)
        machines[key]["commands"].add(entry.get("command", ""))
    lines.append("")
    for group in machines.values():
        m = group["machine"]
        lines.append(
            f"Machine: {m.get('cpu')}, {m.get('logical_cpus')} logical CPUs "
            f"({m.get('usable_cpus')} usable), {m.get('memory_gib')} GiB, torch "
            f"{m.get('torch')} with {m.get('torch_threads')} threads, GPU: "
            f"{m.get('gpu') or 'none'}; flwr {m.get('flwr')}; commit {m.get('git')}."
        )
        lines.append("")
        lines.append("Commands: " + "; ".join(f"`{c}`" for c in sorted(group["commands"])))
        lines.append("")
        lines.extend(f"- {note}" for note in group["runs"])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_docs(path: Path, table: str) -> None:
    """Replace the section between the bench markers (appended when the file lacks them)."""
    section = f"{DOCS_BEGIN}\n{table}{DOCS_END}\n"
    text = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    if DOCS_BEGIN in text and DOCS_END in text:
        head, rest = text.split(DOCS_BEGIN, 1)
        tail = rest.split(DOCS_END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
