"""The training loop shared by every method.

    from ncguide.experiments import TrainConfig, train
    record = train(TrainConfig(method="nearest-etf", dataset="digits", epochs=10), "out/run")

Read top to bottom: :func:`train` sets up and restores the process (devices, process group,
determinism, global RNG states), :func:`_train` builds or resumes a :class:`RunState` and runs the
epochs, :func:`train_one_epoch` takes the optimiser steps, ``evaluate.py`` measures, ``checkpoint.py``
saves. One step (``h`` = backbone features, ``ℓ`` = cross-entropy with ``label_smoothing``)::

    lr = base_lr · lr_factor(step)                         (optim.py; warm-up then constant/step/cosine)
    loss = mean_i ℓ(head(model(x_i), y_i), y_i)            (bf16 autocast on the backbone if amp="bf16")
    loss.backward(); optimizer.step(); head.after_step()

At its start (or resume) a run prints one line of the settings that differ from ``TrainConfig``'s
defaults, leaving out the fields it ignores (``config.ignored_fields``; ``progress.settings_line``).

Outputs in ``out_dir`` (only rank 0 writes):

- ``config.json``: ``cfg.to_dict()``.
- ``metrics.jsonl``: one JSON object per evaluation, at epoch 0 (before training), every
  ``eval_every`` epochs and after the last epoch. Keys: ``epoch`` (epochs completed), ``step``
  (optimiser steps taken), ``wall_s`` (cumulative training seconds, evaluation and checkpointing
  excluded, carried over a resume), ``lr`` (of the latest step; at epoch 0 that of the first step),
  then the record of ``evaluate.evaluate``: ``train_loss, train_acc, test_loss, test_acc`` and the NC
  metrics of the training split (docs/metrics.md); with ``solver: warm``, the solver's counters
  ``warm_refreshes`` and ``warm_fallbacks`` (a run with fallbacks ends with a warning). The UFM has no
  test set: ``test_loss`` and ``test_acc`` are ``null``. Each line is strict JSON (``files.json_text``): a
  non-finite value (NaN, inf) is written as ``null`` too. Each line is fsynced when written
  (``runlog.py`` says what the log guarantees).
- ``metrics.csv``, TensorBoard event files, a W&B run: the same records, for the loggers ``cfg.loggers``
  asks for (``loggers.py``); on resume they are rewritten from the restored ``metrics.jsonl`` (W&B gets only
  the records it has not had). A run that trains without the csv or tensorboard logger deletes that
  logger's files left by an earlier start, with a warning (they would miss the new records); a fresh start
  also forgets the W&B run id, so a new W&B run begins.
- ``checkpoint.pt`` (``checkpoint.py``): after every epoch, atomically; ``finished`` marks a
  completed run (``is_finished``). It keeps a copy of the log's lines.
- ``machine.json`` (``machine.py``): one entry per start or resume (host, CPU, GPU, torch threads, versions,
  runs trained at once), so that a report can say where its seconds were measured.
- ``.lock``: a run holds its folder's lock from start to end (``locks.py``); a second ``train`` into the
  same folder raises ``locks.RunLockedError`` (a ``ValueError``) naming the holder. Under torchrun, rank 0
  holds it and all ranks stop if it cannot.

Resume (``resume=True`` and a checkpoint exists): the checkpoint is restored, ``metrics.jsonl`` is made
to hold exactly the lines the checkpoint kept (records written after it are cut; records lost or cut are
rewritten from the checkpoint's copy, with a warning) and training goes on; the final metrics equal an
uninterrupted run's (bitwise on CPU with ``deterministic=True``, given the same torch version, device and
thread count: with another ``torch.get_num_threads()`` CPU reductions round differently, ~1e-8, so a resume
under another thread count warns). A process killed mid-epoch loses that partial epoch, which is replayed
identically. A finished run is not retrained: its log is made to agree with its checkpoint the same way and
``train`` returns its last record. A checkpoint written by a different config raises
``checkpoint.ResumeError``, a ``ValueError`` (``checkpoint.RUNTIME_FIELDS`` may differ), and so does a folder
whose ``metrics.jsonl`` holds records but has no checkpoint, unless its ``config.json`` shows the same
config: ``resume=False`` is needed to overwrite another run's results.

Ctrl-C (single process): SIGINT only sets a flag; the loop finishes the current step, writes a
checkpoint *at that step* (loader position included) and raises ``KeyboardInterrupt``; resuming
continues exactly there. A second Ctrl-C raises at once. Under torchrun the ranks are not interrupted
in lockstep, so Ctrl-C raises at once and the last end-of-epoch checkpoint is the resume point.

Non-finite loss: the run stops with :class:`NonFiniteLossError` (a ``RuntimeError``) naming the epoch
(from 1) and the global step (from 1); nothing is saved after the last good checkpoint. On CPU the
loss is checked every step, before the update; on CUDA a per-step check would sync the host, so the
first bad step is recorded on the device and read every ``check_every`` steps and at the end of the
epoch (the weights may then hold NaN, but no checkpoint is written). Non-finite features are the same
stop: an ETF head rejects such a batch with ``heads.NonFiniteFeaturesError`` (on CPU) and its solve may
fail with ``torch.linalg.LinAlgError``; both become ``NonFiniteLossError`` with the epoch and step, as do
non-finite weights at the end of an epoch and non-finite features met by the evaluation that follows
(the epoch's last update is not followed by a loss check). Any
other exception raised inside a step keeps its type and gets a note with the epoch and step.

Devices and precision: ``device="auto"`` picks CUDA when available. ``amp="bf16"`` runs the backbone
under ``torch.autocast(bfloat16)`` on CUDA (the heads compute in float32; on CPU it is ignored with a
warning). ``compile=True`` applies ``torch.compile`` to the backbone. ``deterministic=True`` turns on
``torch.use_deterministic_algorithms`` (warn-only on CUDA, where some scatter kernels have no
deterministic version) and, on CUDA, ``CUBLAS_WORKSPACE_CONFIG`` and ``cudnn.benchmark=False``.
Every process-wide setting a run changes, and the global RNG states, are restored when it returns.

Distributed data parallel, via torchrun (``distributed.py``)::

    torchrun --nproc_per_node 4 -m ncguide train --config cifar10-resnet18 --out out/c10
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m ncguide train --config imagenet-resnet50 --out out/in1k

``batch_size`` is the global batch: each rank gets its slice of every global batch, DDP wraps the
backbone, the heads all-reduce their class statistics themselves, and the gradients of head
parameters are all-reduced here. Each rank's loss is scaled so that the averaged gradient is exactly
that of the mean loss over the global batch, even when the last batch splits unevenly. Evaluation is
sharded the same way. Batch norm statistics are per rank (use ``SyncBatchNorm`` to match a
single-process run). Only rank 0 writes files and prints (``progress.py``).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..heads import Head, NonFiniteFeaturesError
from . import distributed
from .build import build_backbone, build_run_head, data_fingerprint, load_data, make_loaders, steps_per_epoch
from .checkpoint import (
    CHECKPOINT,
    CHECKPOINT_VERSION,
    UNREADABLE_ADVICE,
    NotACheckpointError,
    ResumeError,
    check_same_config,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .config import TrainConfig
from .distributed import Placement
from .evaluate import evaluate
from .files import append_line, atomic_write_text, json_text, last_record, truncate
from .locks import RunLockedError, folder_lock
from .loggers import RunLoggers, check_loggers, open_loggers
from .machine import record_start
from .optim import agd_init_, build_optimizer, lr_factor, set_lr
from .progress import PROGRESS_MODES, Progress, settings_line
from .runlog import METRICS, log_has_results, log_state, restore_config, restore_log

__all__ = ["METRICS", "NonFiniteLossError", "RunState", "train", "train_one_epoch"]


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss, or the features a head was given, became NaN or infinite (the message
    names the epoch and step)."""


@dataclass
class RunState:
    """One training run: its parts, and where it stands (what a checkpoint stores besides the modules)."""

    cfg: TrainConfig
    out: Path
    where: Placement
    model: nn.Module
    head: Head
    optimizer: torch.optim.Optimizer
    loader: Any  # data.TensorLoader or data.DatasetLoader: iterable, len, position, set_epoch, state_dict
    eval_loaders: dict[str, Any]
    n_train: int  # training samples (all ranks)
    lr_factor: Callable[[int], float]  # step -> multiplier of the base learning rate
    autocast: Callable[[], Any]
    net: nn.Module | None = None  # the model as a step calls it (wrapped in DDP / torch.compile)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    wall_s: float = 0.0  # training seconds, evaluation and checkpointing excluded
    mid_epoch: bool = False  # stopped inside an epoch (Ctrl-C): resume there, not at a new epoch
    last: dict = field(default_factory=dict)  # the latest evaluation record
    data_fingerprint: str | None = None  # npz: data, the file's sha256 when the run was built
    log: list[str] = field(default_factory=list)  # the lines of metrics.jsonl so far (kept in the checkpoint)
    loggers: RunLoggers | None = None  # cfg.loggers besides jsonl (loggers.py): each record goes to them too


def train(
    cfg: TrainConfig | dict,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: str = "auto",
    *,
    model: nn.Module | None = None,
    head: Head | None = None,
) -> dict:
    """Train ``cfg`` into ``out_dir`` (see the module docstring); returns the last metrics record.

    ``model``: a backbone to use instead of building ``cfg.model`` (it needs ``feature_dim``; ``cfg.model``
    is then only a label). ``head``: a head to use instead of ``build_head(cfg.method, ...)``, e.g. a
    subclass for a probe; the config's head options (``freeze_after`` too) are then not applied to it.
    Either must be built identically when the run is resumed.
    """
    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    cfg.validate(check_registries=model is None)
    check_loggers(cfg.loggers)
    if progress not in PROGRESS_MODES:
        raise ValueError(f"unknown progress {progress!r} (valid: {', '.join(PROGRESS_MODES)})")
    with _global_settings_restored():
        where = distributed.setup(cfg.device)
        try:
            with _run_lock(Path(out_dir), where):
                return _train(cfg, Path(out_dir), resume, progress, model, head, where)
        finally:
            distributed.teardown(where)


def _train(cfg: TrainConfig, out: Path, resume: bool, progress: str, model, head, where: Placement) -> dict:
    _set_determinism(cfg.deterministic, where.device)
    if cfg.amp == "bf16" and where.device.type != "cuda":
        warnings.warn("amp='bf16' needs CUDA; training in float32 on CPU", stacklevel=3)
    seed_everything(cfg.seed)
    ckpt = None
    if resume and (out / CHECKPOINT).is_file():
        ckpt = load_checkpoint(out / CHECKPOINT)
        check_same_config(ckpt["config"], cfg, out / CHECKPOINT)
        _check_same_data(ckpt, cfg, out / CHECKPOINT)
        log_lines = restore_log(out, ckpt, write=where.rank == 0)  # the log as the checkpoint counted it
        if ckpt.get("finished"):  # nothing to do: skip loading data and building the model
            restore_config(out, ckpt, write=where.rank == 0)
            with open_loggers(cfg, out, log_lines, write=where.rank == 0, grows=False):  # outputs agree with the log
                pass
            return json.loads(log_lines[-1]) if log_lines else last_record(out / METRICS)
        threads = ckpt.get("num_threads")
        if threads is not None and threads != torch.get_num_threads() and where.device.type == "cpu":
            warnings.warn(f"resuming {out} with {torch.get_num_threads()} threads; it ran with {threads}, so the "
                          "results may differ from an uninterrupted run by rounding (~1e-8)", stacklevel=3)
    elif resume:
        _refuse_to_overwrite(out, cfg)

    run = _build_run(cfg, out, where, model, head)
    out.mkdir(parents=True, exist_ok=True)
    fresh = ckpt is None
    if fresh:
        _start_fresh(run)
    else:
        _restore(run, ckpt, log_lines)
        del ckpt
    if where.rank == 0:
        atomic_write_text(out / "config.json", json_text(cfg.to_dict(), indent=2) + "\n")
        record_start(out, where.device, where.world, run.epoch, fresh)  # machine.json: where this start trains
    run.net = _wrap_for_training(run.model, cfg, where)

    watch = _NonFiniteWatch(run)
    with _InterruptFlag(enabled=where.world == 1) as interrupt, \
            Progress(progress if where.rank == 0 else "none", cfg.epochs, len(run.loader)) as show, \
            open_loggers(cfg, out, run.log, write=where.rank == 0, fresh=fresh) as run.loggers:  # the restored log
        show.note(settings_line(cfg))
        if fresh:
            show.record(_log_evaluation(run))
            _save(run, finished=cfg.epochs == 0)
            interrupt.raise_if_set()
        while run.epoch < cfg.epochs:
            running = train_one_epoch(run, watch, show, interrupt)
            run.epoch += 1
            run.mid_epoch = False
            if run.epoch % cfg.eval_every == 0 or run.epoch == cfg.epochs:
                show.record(_log_evaluation(run))
            else:
                show.running(run.epoch, running, run.wall_s)
            _save(run, finished=run.epoch == cfg.epochs)
            if run.epoch < cfg.epochs:
                interrupt.raise_if_set()
    if where.world > 1:
        dist.barrier()
    _warn_about_fallbacks(run)
    return run.last or last_record(out / METRICS)


def _warn_about_fallbacks(run: RunState) -> None:
    """One warning at the end of a run whose warm solver fell back (``heads.NearestETFHead.solver_stats``)."""
    fallbacks = run.last.get("warm_fallbacks") if run.last else None
    if fallbacks and run.where.rank == 0:
        warnings.warn(f"solver='warm' fell back on {fallbacks} of {run.step} training steps: their U missed the "
                      "certificate's tolerance (used as it was, or the previous step's U); see warm_fallbacks in "
                      f"{run.out / METRICS}, or use solver='auto'", stacklevel=3)


def train_one_epoch(run: RunState, watch: _NonFiniteWatch, show: Progress, interrupt: _InterruptFlag) -> torch.Tensor:
    """Steps from the loader's position to the end of the epoch; returns this rank's (loss sum, correct,
    count) over them. On Ctrl-C it checkpoints at the current step and raises ``KeyboardInterrupt``."""
    device = run.where.device
    if not run.mid_epoch:
        run.loader.set_epoch(run.epoch)
    run.mid_epoch = True
    run.model.train()
    run.head.train()
    running = torch.zeros(3, dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    show.start_epoch(run.epoch + 1, initial=run.loader.position)
    for x, y in run.loader:
        where = f"epoch {run.epoch + 1}, step {run.step + 1}"
        try:
            loss_sum, logits = _train_step(run, watch, x, y)
        except (ValueError, RuntimeError) as e:
            if isinstance(e, (NonFiniteFeaturesError, torch.linalg.LinAlgError)):  # the head's solve on bad features
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise NonFiniteLossError(
                    f"non-finite features at {where} (global step, counted from 1): {reason}; stopping. "
                    f"The last good checkpoint is {run.out / CHECKPOINT} (lower the learning rate, or check the data)"
                ) from e
            if not isinstance(e, NonFiniteLossError):
                _add_note(e, f"training failed at {where}")
            raise
        running += torch.stack([loss_sum.double(), (logits.argmax(1) == y).sum().double(),
                                torch.full((), len(y), dtype=torch.float64, device=device)])
        show.step(running)
        # Ctrl-C: checkpoint at this step, inside the epoch (after its last step, the end-of-epoch
        # checkpoint serves, so a resume does not start a new pass)
        if interrupt.is_set() and run.loader.position < len(run.loader):
            watch.check(force=True)
            run.wall_s += _elapsed(t0, device)
            _save(run)
            interrupt.raise_if_set()
    watch.check(force=True)
    _check_finite_weights(run)
    run.wall_s += _elapsed(t0, device)
    return running


def _check_finite_weights(run: RunState) -> None:
    """End of epoch, before evaluating and checkpointing: the loss is checked before each update, so the
    epoch's last update can still have made the weights non-finite (one host read per epoch)."""
    tensors = [t for m in (run.model, run.head) for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise NonFiniteLossError(
            f"non-finite weights after epoch {run.epoch + 1}, step {run.step} (global step, counted from 1); "
            f"stopping. The last good checkpoint is {run.out / CHECKPOINT} (lower the learning rate, or check the data)"
        )


def _train_step(run: RunState, watch: _NonFiniteWatch, x: torch.Tensor, y: torch.Tensor):
    """One optimiser step; returns (this rank's loss sum, detached logits)."""
    cfg, world = run.cfg, run.where.world
    batch = run.step - run.epoch * len(run.loader)  # index of this global batch within the epoch
    set_lr(run.optimizer, run.lr_factor(run.step))
    with run.autocast():
        feats = run.net(x)
    logits = run.head(feats, y)
    if world == 1:
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loss_sum = loss.detach() * len(y)
    else:  # DDP averages over ranks: scale so the result is the global batch's mean loss
        loss_sum = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction="sum")
        loss = loss_sum * (world / distributed.global_batch_size(batch, cfg.batch_size, run.n_train))
        loss_sum = loss_sum.detach()
    run.step += 1
    watch.record(loss_sum, run.step)
    watch.check()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if world > 1:
        distributed.all_reduce_grads(run.head, world)
    run.optimizer.step()
    run.head.after_step()
    return loss_sum, logits.detach()


# ------------------------------------------------------------------------------- building and saving


def _build_run(cfg: TrainConfig, out: Path, where: Placement, model, head) -> RunState:
    """Data, model, head, optimiser, loaders and learning-rate schedule, in this order (the global RNG
    draws of a run depend on it)."""
    fingerprint = data_fingerprint(cfg)  # before reading: a file changed while loading counts as changed
    ds = load_data(cfg)
    if model is None:
        model = build_backbone(cfg, ds)
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if head is None:  # steps per epoch: for cfg.freeze_after, given in epochs
        head = build_run_head(cfg, int(model.feature_dim), ds.num_classes,
                              steps_per_epoch(cfg, ds, where.world, batch_norm))
    model.to(where.device)
    head.to(where.device)
    named = [("model." + n, p) for n, p in model.named_parameters()]
    named += [("head." + n, p) for n, p in head.named_parameters()]
    opt = build_optimizer(cfg.optimizer, named, cfg.agd_gain if cfg.optimizer == "agd" else cfg.lr,
                          momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "agd":  # AGD starts from its own initialisation (optim.py, Algorithm 1)
        agd_init_(p for group in opt.param_groups for p in group["params"])
    head.after_step()  # re-establish the head's invariant (StandardHead's unit rows) after any re-init
    loader, eval_loaders = make_loaders(cfg, ds, where.device, where.rank, where.world, batch_norm=batch_norm)
    spe = len(loader)
    schedule = functools.partial(lr_factor, total_steps=cfg.epochs * spe, schedule=cfg.schedule,
                                 warmup_steps=round(cfg.warmup_epochs * spe),
                                 milestones=[m * spe for m in cfg.step_milestones], gamma=cfg.gamma)
    amp = cfg.amp == "bf16" and where.device.type == "cuda"
    return RunState(cfg=cfg, out=out, where=where, model=model, head=head, optimizer=opt, loader=loader,
                    eval_loaders=eval_loaders, n_train=len(ds.train_set) if ds.is_lazy else len(ds.y_train),
                    lr_factor=schedule, data_fingerprint=fingerprint,
                    autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext)


def _refuse_to_overwrite(out: Path, cfg: TrainConfig) -> None:
    """No checkpoint, but ``metrics.jsonl`` holds results (``runlog.log_has_results``: records after epoch 0):
    starting fresh would erase them. Allowed only when ``config.json`` shows the same config (retraining
    reproduces them); otherwise ``ResumeError``. A log of a run killed before its first checkpoint (at most
    the epoch-0 record) holds no results: trained afresh."""
    metrics = out / METRICS
    if not log_has_results(metrics):
        return
    try:
        saved = json.loads((out / "config.json").read_text())
        check_same_config(saved, cfg, out / "config.json")
        return
    except ResumeError as e:
        why = e.problem
    except ValueError:  # json.JSONDecodeError
        why = f"{out / 'config.json'} is unreadable"
    except (OSError, TypeError, AttributeError):
        why = f"{out / 'config.json'} is missing or unreadable"
    raise ResumeError(f"{metrics} holds the results of an earlier run but {out / CHECKPOINT} is missing ({why})",
                      "pass {no_resume} to overwrite them, or use another {out}")


def _check_same_data(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    """A checkpoint of an ``npz:`` run is resumed (or reused) only with the same file content."""
    saved, now = ckpt.get("data_fingerprint"), data_fingerprint(cfg)
    if saved is not None and now is not None and saved != now:
        raise ResumeError(f"{path} was trained on other data: the content of {cfg.dataset.partition(':')[2]} has "
                          "changed since (sha256 differs)")


def _start_fresh(run: RunState) -> None:
    if run.where.rank == 0:
        (run.out / CHECKPOINT).unlink(missing_ok=True)  # a stale (e.g. finished) checkpoint must not outlive it
        truncate(run.out / METRICS, 0)  # refuses a link planted in the folder
    set_lr(run.optimizer, run.lr_factor(0))  # so the epoch-0 record shows the first step's lr


def _restore(run: RunState, ckpt: dict, log_lines: list[str]) -> None:
    """Load the checkpoint's states (``load_checkpoint`` checked their types; states that do not fit this run's
    model, head, optimiser or generators are one line too)."""
    part = "model"
    try:
        run.model.load_state_dict(ckpt["model"])
        part = "head"
        run.head.load_state_dict(ckpt["head"])
        part = "optimizer"
        run.optimizer.load_state_dict(ckpt["optimizer"])
        part = "loader"
        run.loader.load_state_dict(ckpt["loader"])
        part = "rng"
        set_rng_state(ckpt["rng"])
    except (RuntimeError, KeyError, TypeError, IndexError) as e:
        why = " ".join(str(e).split()) or type(e).__name__  # torch's message spans lines: one line, cut short
        why = why if len(why) <= 240 else why[:237] + "..."
        raise NotACheckpointError(f"{run.out / CHECKPOINT} is unreadable (not an ncguide checkpoint: its {part} "
                                  f"state does not fit the run: {why})", UNREADABLE_ADVICE) from None
    run.epoch, run.step, run.wall_s, run.mid_epoch = ckpt["epoch"], ckpt["step"], ckpt["wall_s"], ckpt["mid_epoch"]
    run.log = log_lines


def _wrap_for_training(model: nn.Module, cfg: TrainConfig, where: Placement) -> nn.Module:
    net = model
    if where.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[where.device.index] if where.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return net


def _log_evaluation(run: RunState) -> dict:
    """Evaluate, append the record to ``metrics.jsonl`` (rank 0) and keep it as ``run.last``."""
    rec = {"epoch": run.epoch, "step": run.step, "wall_s": run.wall_s, "lr": run.optimizer.param_groups[0]["lr"]}
    try:
        rec.update(evaluate(run.model, run.head, run.eval_loaders, run.autocast))
    except (ValueError, RuntimeError) as e:
        # after training steps, non-finite features (weights so large that they overflow) mean divergence
        if run.step == 0 or not (isinstance(e, (NonFiniteFeaturesError, torch.linalg.LinAlgError))
                                 or "NaN or inf" in str(e)):
            raise
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NonFiniteLossError(
            f"non-finite values when evaluating after epoch {run.epoch}, step {run.step} (global step, counted "
            f"from 1): {reason}; stopping. The last good checkpoint is {run.out / CHECKPOINT} (lower the learning "
            "rate, or check the data)"
        ) from e
    rec.update(run.head.solver_stats())  # solver="warm": warm_refreshes, warm_fallbacks (heads.py)
    run.last = rec
    run.log.append(json_text(rec))
    if run.where.rank == 0:
        append_line(run.out / METRICS, run.log[-1])  # fsynced: on disk before the checkpoint that counts it
        if run.loggers is not None:
            run.loggers.log(json.loads(run.log[-1]))  # the record as the log holds it
    return rec


def _save(run: RunState, finished: bool = False) -> None:
    if run.where.rank != 0:
        return
    save_checkpoint(run.out / CHECKPOINT, {
        "version": CHECKPOINT_VERSION, "config": run.cfg.to_dict(), "epoch": run.epoch, "step": run.step,
        "wall_s": run.wall_s,
        "mid_epoch": run.mid_epoch, "finished": finished, "model": run.model.state_dict(),
        "head": run.head.state_dict(), "optimizer": run.optimizer.state_dict(), "loader": run.loader.state_dict(),
        "data_fingerprint": run.data_fingerprint,
        "rng": get_rng_state(), **log_state(run.log),
        "num_threads": torch.get_num_threads(),
    })


# ------------------------------------------------------------------------------------------ helpers


class _NonFiniteWatch:
    """The first step with a non-finite loss, recorded on the device (no host sync) and read every
    ``check_every`` steps on CUDA (every step on CPU) and whenever ``force``d."""

    NONE = torch.iinfo(torch.long).max

    def __init__(self, run: RunState):
        self.run = run
        self.every = 1 if run.where.device.type == "cpu" else run.cfg.check_every
        self.first_bad = torch.full((), self.NONE, dtype=torch.long, device=run.where.device)

    def record(self, loss_sum: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss_sum)
        self.first_bad = torch.where(bad & (self.first_bad == self.NONE), step, self.first_bad)

    def check(self, force: bool = False) -> None:
        run = self.run
        if not force and run.step % self.every:
            return
        bad = self.first_bad.clone()
        if run.where.world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        if int(bad) != self.NONE:
            epoch = 1 + (int(bad) - 1) // len(run.loader)
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, step {int(bad)} (global step, counted from 1); stopping. "
                f"The last good checkpoint is {run.out / CHECKPOINT} (lower the learning rate, or check the data)"
            )


class _InterruptFlag:
    """While active, the first SIGINT sets a flag (the loop checkpoints and raises between steps);
    the second one raises ``KeyboardInterrupt`` at once. Only in the main thread, and only if enabled."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._set = False
        self._previous = None

    def _handler(self, signum, frame):
        self._set = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> _InterruptFlag:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def is_set(self) -> bool:
        return self._set

    def raise_if_set(self) -> None:
        if self._set:
            raise KeyboardInterrupt


@contextmanager
def _run_lock(out: Path, where: Placement) -> Iterator[None]:
    """Rank 0 holds ``out``'s lock (``locks.py``) for the whole run; under torchrun the other ranks learn
    whether it got it (one broadcast), so that all of them stop together when it did not."""
    if where.world == 1:
        with folder_lock(out):
            yield
        return
    with ExitStack() as stack:
        error = None
        if where.rank == 0:
            try:
                stack.enter_context(folder_lock(out))
            except Exception as e:  # noqa: BLE001 (re-raised below, after telling the other ranks)
                error = e
        ok = torch.tensor([int(error is None)], dtype=torch.int32, device=where.device)
        dist.broadcast(ok, 0)
        if error is not None:
            raise error
        if not int(ok):
            raise RunLockedError(f"{out} could not be locked by rank 0 (see its error); nothing was trained")
        yield


def _set_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")


@contextmanager
def _global_settings_restored() -> Iterator[None]:
    """Put back, on the way out, every process-wide setting a run may change: the determinism flags,
    cuDNN's flags, ``CUBLAS_WORKSPACE_CONFIG``, the global RNG states and the thread count."""
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    det = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    rng, threads = get_rng_state(), torch.get_num_threads()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det[0], warn_only=det[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        if env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = env
        set_rng_state(rng)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` keeping its type: ``add_note`` (Python 3.11+), else in its message."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    elif exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} ({note})", *exc.args[1:])


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
