"""Where a run trained: ``RUN_DIR/machine.json``, one entry per start or resume, and the report's lines on it.

Wall-clock seconds depend on the machine, on the number of torch threads and on whatever else ran beside
the run; a report that prints seconds says where they were measured. ``train`` appends an entry each time
it starts or resumes training (rank 0; a run trained from scratch starts the list afresh, a finished run that
is only reused adds nothing), rewriting the file atomically::

    {"starts": [{"started": "2026-11-27 10:00:00 +0000", "epoch": 0, "hostname": "node1",
                 "cpu": "Intel(R) Xeon(R) ...", "logical_cores": 16, "usable_cores": 2, "torch_threads": 2,
                 "device": "cpu", "gpu": null, "world_size": 1, "torch": "2.13.0+cpu", "ncguide": "0.1.0",
                 "python": "3.12.3", "concurrent_runs": 1, "slurm_job": null}, ...]}

``epoch`` is where that start took over (0 for a fresh run). ``usable_cores`` is the process's CPU affinity
(taskset, cgroups, a Slurm allocation). ``concurrent_runs`` is how many runs the launcher let train at once
on this machine (``--jobs N``: the pool's slots; it passes the number to its children in
``NCGUIDE_CONCURRENT_RUNS``); 1 when a run trained alone as far as ncguide knows, which says nothing of other
programs. Folders written before ``machine.json`` existed have none: the report says "not recorded".
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path

import torch

from .files import atomic_write_text, json_text

__all__ = ["MACHINE", "CONCURRENT_ENV", "IDENTITY", "cpu_model", "machine_info", "record_start", "read_starts",
           "summarize_machines", "machine_lines"]

MACHINE = "machine.json"
CONCURRENT_ENV = "NCGUIDE_CONCURRENT_RUNS"
# The fields that name one machine set-up in a report: runs that agree on all of them share a line.
IDENTITY = ("hostname", "cpu", "logical_cores", "device", "gpu", "torch", "ncguide")


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows (``arm``, ``x86_64``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _concurrent_runs() -> int:
    try:
        return max(1, int(os.environ.get(CONCURRENT_ENV, "1")))
    except ValueError:
        return 1


def machine_info(device: torch.device, world_size: int = 1) -> dict:
    """This process's machine, threads and versions (one entry of ``machine.json`` without ``started``/``epoch``)."""
    from .. import __version__

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"hostname": socket.gethostname(), "cpu": cpu_model(), "logical_cores": os.cpu_count() or 1,
            "usable_cores": _usable_cores(), "torch_threads": torch.get_num_threads(), "device": device.type,
            "gpu": gpu, "world_size": world_size, "torch": torch.__version__, "ncguide": __version__,
            "python": platform.python_version(), "concurrent_runs": _concurrent_runs(),
            "slurm_job": os.environ.get("SLURM_JOB_ID")}


def record_start(out: Path, device: torch.device, world_size: int, epoch: int, fresh: bool = False) -> dict:
    """Append this start to ``out/machine.json`` (atomically; an unreadable file is started afresh; ``fresh``:
    a run trained from scratch, whose earlier entries described results it replaces) and return the entry."""
    entry = {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "epoch": epoch, **machine_info(device, world_size)}
    starts = [] if fresh else read_starts(out) or []
    atomic_write_text(out / MACHINE, json_text({"starts": [*starts, entry]}, indent=2) + "\n")
    return entry


def read_starts(folder: Path) -> list[dict] | None:
    """The entries of ``folder/machine.json``; None when it is missing or not one we wrote."""
    try:
        starts = json.loads((Path(folder) / MACHINE).read_text()).get("starts")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(starts, list) or not starts or not all(isinstance(s, dict) for s in starts):
        return None
    return starts


# ----------------------------------------------------------------------------------------------------
# the report


def summarize_machines(starts_by_run: dict[str, list[dict] | None]) -> dict:
    """``{run: its machine.json entries or None}`` → ``{"machines": [{IDENTITY fields, "threads": [...],
    "concurrent_runs": [...], "runs": n}], "not_recorded": [runs], "moved": [runs resumed on another machine
    set-up]}``. A run counts once per machine set-up it trained on."""
    machines: dict[tuple, dict] = {}
    not_recorded, moved = [], []
    for run, starts in starts_by_run.items():
        if not starts:
            not_recorded.append(run)
            continue
        keys = []
        for s in starts:
            key = tuple(s.get(k) for k in IDENTITY)
            m = machines.setdefault(key, {**dict(zip(IDENTITY, key)), "threads": set(), "concurrent_runs": set(),
                                          "runs": 0})
            m["threads"].add(s.get("torch_threads"))
            m["concurrent_runs"].add(s.get("concurrent_runs") or 1)
            if key not in keys:
                keys.append(key)
                m["runs"] += 1
        if len(keys) > 1:
            moved.append(run)
    seen = [{**m, "threads": sorted(t for t in m["threads"] if t is not None),
             "concurrent_runs": sorted(m["concurrent_runs"])} for m in machines.values()]
    return {"machines": seen, "not_recorded": not_recorded, "moved": moved}


def _describe(m: dict) -> str:
    gpu = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    threads = ", ".join(map(str, m["threads"])) or "?"
    plural = "s" if m["threads"] != [1] else ""
    return (f"`{m.get('hostname')}`: {m.get('cpu')} ({m.get('logical_cores')} logical cores), {gpu}; "
            f"torch {m.get('torch')}, ncguide {m.get('ncguide')}; {threads} torch thread{plural} per run; "
            f"{m['runs']} run{'s' if m['runs'] != 1 else ''}")


def machine_lines(machines: dict) -> list[str]:
    """Markdown: one line per machine set-up, then what makes the runs' seconds hard to compare (several
    machines or thread counts, runs trained at once, runs moved between machines, machines not recorded)."""
    seen, unknown, moved = machines["machines"], machines["not_recorded"], machines["moved"]
    if not seen:
        return ["Machine: not recorded (these runs were made before ncguide wrote `machine.json`)."]
    lines = [f"- Machine {_describe(m)}." for m in seen]
    notes = []
    if len(seen) > 1:
        notes.append(f"the runs trained on {len(seen)} different machines or software versions, so seconds compare "
                     "only between runs of one machine")
    threads = sorted({t for m in seen for t in m["threads"]})
    if len(threads) > 1:
        notes.append(f"runs trained with different torch thread counts ({', '.join(map(str, threads))})")
    most = max(c for m in seen for c in m["concurrent_runs"])
    if most > 1:
        notes.append(f"up to {most} runs trained at once (`--jobs`), sharing the machine's cores, caches and memory "
                     "bandwidth")
    if moved:
        notes.append(f"{len(moved)} run{'s' if len(moved) > 1 else ''} resumed on another machine set-up than the "
                     f"one {'they' if len(moved) > 1 else 'it'} started on (e.g. `{moved[0]}`): such seconds add up "
                     "time from both")
    if unknown:
        notes.append(f"machine not recorded for {len(unknown)} run{'s' if len(unknown) > 1 else ''} (e.g. "
                     f"`{unknown[0]}`, made before ncguide wrote `machine.json`)")
    if notes:
        lines.append("")
        lines.append("**Mind when comparing seconds**: " + "; ".join(notes) + ".")
    return lines
