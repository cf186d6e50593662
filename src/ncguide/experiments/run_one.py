"""One run of a comparison in its own process, as a launcher starts it (``launch.py``, ``slurm.py``):

    python -m ncguide.experiments.run_one RUN_DIR
    torchrun --standalone --nproc_per_node G -m ncguide.experiments.run_one RUN_DIR

trains the config of ``RUN_DIR/launch.json`` (written by the launcher: ``config``, ``resume``, ``threads``)
into ``RUN_DIR`` with ``train.train`` — the same run, under the same folder lock, as ``ncguide train``.

- Exit status 0 when the run finished or diverged (``DIVERGED`` in the folder says why), 130 when it was
  stopped (it is resumable), 1 on any other error (its traceback, then one line ``ncguide: error: ...``).
- SIGTERM counts as one Ctrl-C: the run saves a checkpoint at its current step and exits with 130 (under
  torchrun it stops at once; the last end-of-epoch checkpoint is the resume point). SIGUSR2, Slurm's
  warning before a time limit, is left to the job's own process (which sends SIGTERM here).
- On Linux the process gets SIGTERM when the launcher that started it dies (``NCGUIDE_LAUNCH_PARENT``).
- A requeued Slurm job (``SLURM_RESTART_COUNT`` > 0) always resumes from the run's checkpoint.
- ``threads`` is split among the processes of a node under torchrun.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
from pathlib import Path

__all__ = ["main", "sigterm_as_ctrl_c"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ncguide.experiments.run_one RUN_DIR (a run folder holding launch.json)",
              file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    signal.signal(signal.SIGTERM, sigterm_as_ctrl_c)
    if hasattr(signal, "SIGUSR2"):
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        _die_with_parent()
        import torch

        from .checkpoint import CHECKPOINT
        from .config import TrainConfig
        from .launch import LAUNCH_SPEC, record_divergence
        from .report import short_record
        from .train import NonFiniteLossError, train

        spec = json.loads((run_dir / LAUNCH_SPEC).read_text())
        cfg = TrainConfig.from_dict(spec["config"])
        resume = bool(spec.get("resume", True)) or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
        if spec.get("threads"):
            torch.set_num_threads(max(1, int(spec["threads"]) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        if rank0:
            how = "resuming from its checkpoint" if resume and (run_dir / CHECKPOINT).is_file() else "training"
            n = torch.get_num_threads()
            print(f"ncguide: {cfg.method} seed {cfg.seed} in {run_dir}: {how} ({n} thread{'s' if n > 1 else ''})",
                  flush=True)
        try:
            record = train(cfg, run_dir, resume=resume, progress="table")
        except NonFiniteLossError as e:
            line = record_divergence(run_dir, e) if rank0 else str(e)
            print(f"ncguide: diverged: {line}", flush=True)
            return 0
        if rank0:
            print(f"ncguide: done: {short_record(record or {})}", flush=True)
        return 0
    except KeyboardInterrupt:
        print("ncguide: stopped; the run resumes from its checkpoint when started again", file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # noqa: BLE001 (reported in the log: traceback, then one line)
        traceback.print_exc()
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"ncguide: error: {line}", file=sys.stderr, flush=True)
        return 1


def sigterm_as_ctrl_c(signum, frame) -> None:
    """A SIGTERM handler: the first SIGTERM acts as Ctrl-C (a SIGINT to this process: ``train`` checkpoints at the
    current step, then stops); later ones are ignored. Also installed by ``ncguide train`` and ``compare``."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGINT)


def _die_with_parent() -> None:
    """Linux: SIGTERM when the launcher (``NCGUIDE_LAUNCH_PARENT``, our parent) exits; not under torchrun,
    whose agent is the parent."""
    parent = os.environ.get("NCGUIDE_LAUNCH_PARENT")
    if not parent or "LOCAL_RANK" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the launcher died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
