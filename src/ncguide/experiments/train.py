"""The training loop shared by every method: evaluation, logs, checkpoint/resume, DDP, mixed precision.

    from ncguide.config import TrainConfig
    from ncguide.train import train
    record = train(TrainConfig(method="nearest-etf", dataset="digits", epochs=10), "out/run")

Per step (``h`` = backbone features, ``ℓ`` = cross-entropy with ``label_smoothing``)::

    lr = base_lr · lr_factor(step)                         (optim.py; warm-up then constant/step/cosine)
    loss = mean_i ℓ(head(model(x_i), y_i), y_i)            (bf16 autocast on the backbone if amp="bf16")
    loss.backward(); optimizer.step(); head.after_step()

Outputs in ``out_dir`` (only rank 0 writes):

- ``config.json``: ``cfg.to_dict()``.
- ``metrics.jsonl``: one JSON object per evaluation, at epoch 0 (before training), every
  ``eval_every`` epochs and after the last epoch. Keys: ``epoch`` (epochs completed), ``step``
  (optimiser steps taken), ``wall_s`` (cumulative training seconds, evaluation and checkpointing
  excluded, carried over a resume), ``lr`` (of the latest step; at epoch 0 that of the first step),
  ``train_loss, train_acc, test_loss, test_acc`` (model and head in eval mode; plain cross-entropy,
  no label smoothing), and the NC metrics of ``metrics.nc_metrics`` on the training set's
  ``h̃ = head.transform(model(x))`` with ``head.weight, head.bias`` (``nc1, nc1_papyan, nc1_trace,
  nc2_w, nc2_h, nc3, nc3_dist, nc4, bias_collapse, *_equinorm, *_equiangular, *_maxangle,
  cosine_margin``). The UFM has no test set: ``test_loss`` and ``test_acc`` are ``null``.
  Non-finite values are written as ``NaN``/``Infinity`` (Python's ``json`` reads them back).
- ``checkpoint.pt``: written atomically (temporary file in ``out_dir`` + ``os.replace``) after every
  epoch; it holds model, head (running means, ``U_prev``), optimiser, step, loader position, the RNG
  states (torch, CUDA, numpy, python) and the size of ``metrics.jsonl`` at that point; ``finished``
  marks a completed run (``is_finished``).

Resume (``resume=True`` and a checkpoint exists): everything above is restored, ``metrics.jsonl`` is
truncated to its size at the checkpoint (dropping lines a killed run wrote later) and training goes
on; the final metrics equal an uninterrupted run's (bitwise on CPU with ``deterministic=True``). A
process killed mid-epoch (SIGKILL, power loss) loses that partial epoch, which is replayed identically.
A finished run is not retrained: ``train`` returns its last record. A checkpoint written by a
different config (other than ``device, data_dir, compile, check_every, eval_batch_size,
nc1_threshold, num_workers``) raises ``ValueError``.

Ctrl-C (single process): SIGINT only sets a flag; the loop finishes the current step, writes a
checkpoint *at that step* (loader position inside the epoch included), and raises
``KeyboardInterrupt``. Resuming from it continues exactly where it stopped. A second Ctrl-C raises
at once (the last written checkpoint stands). Under torchrun the ranks are not interrupted in
lockstep, so Ctrl-C raises at once and the last end-of-epoch checkpoint is the resume point.

Non-finite loss: the run stops with ``RuntimeError("non-finite loss ... at epoch E, step S ...")``
(``E`` counted from 1, ``S`` the global step, counted from 1) and nothing is saved after the last
good checkpoint. On CPU the loss is checked every step, before the update. On CUDA a per-step check
would sync the host, so the first bad step is recorded on the device and read every ``check_every``
steps and at the end of the epoch (the weights may then hold NaN, but no checkpoint is written).
An exception raised inside a step (e.g. an SVD that fails on NaN features) is re-raised with the
epoch and step in its message.

Devices and precision: ``device="auto"`` picks CUDA when available. ``amp="bf16"`` runs the backbone
under ``torch.autocast(bfloat16)`` on CUDA (the heads compute in float32; on CPU it is ignored with a
warning). ``compile=True`` applies ``torch.compile`` to the backbone. ``deterministic=True`` calls
``torch.use_deterministic_algorithms(True)`` (warn-only on CUDA, where some scatter kernels have no
deterministic version) for the duration of the run.

Distributed data parallel, via torchrun (no launcher of our own)::

    torchrun --nproc_per_node 4 -m ncguide train --config configs/cifar10-resnet18.yaml --out out/c10
    # several nodes (run on each; torchrun handles rendezvous):
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m ncguide train --config configs/imagenet-resnet50.yaml --out out/in1k

When ``RANK``/``WORLD_SIZE`` are set, ``train`` initialises the process group (NCCL on CUDA, one GPU
per local rank; gloo on CPU) unless it already is. ``batch_size`` is the global batch: each rank
gets its slice of every global batch (``TensorLoader(rank=, world_size=)``), DDP wraps the backbone,
the heads all-reduce their class statistics themselves, and the gradients of head parameters are
all-reduced here. Each rank's loss is scaled so that the averaged gradient is exactly that of the
mean loss over the global batch, even when the last batch splits unevenly. Evaluation is sharded
the same way and its sums are all-reduced, so every rank computes the same record. Batch norm
statistics are per rank (use a model without batch norm, or ``SyncBatchNorm``, to match a
single-process run). Only rank 0 writes files and prints.

Progress: ``progress="auto"`` shows a tqdm bar on a terminal (``sys.stderr.isatty()``), otherwise a
fixed-width table with one line per epoch (``epoch, train_loss, train_acc, test_acc, nc1, time_s``:
evaluation values on evaluation epochs; on others the running averages over the epoch's training
batches, rank 0's shard, and ``-``); ``"bar"``/``"table"`` force one, ``"none"`` is silent.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..heads import build_head, head_options
from .config import ETF_METHODS, TrainConfig, with_defaults
from .files import atomic_write, atomic_write_text, last_record
from .optim import build_optimizer, lr_factor, set_lr

__all__ = ["train", "is_finished", "load_checkpoint", "evaluate", "NonFiniteLossError"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RUNTIME_FIELDS = {"device", "data_dir", "compile", "check_every", "eval_batch_size", "nc1_threshold", "num_workers"}
_PROGRESS = ("auto", "bar", "table", "none")
_CACHE_BYTES = 512 * 2**20  # evaluation keeps the training features for the 2nd NC pass up to this size


# ------------------------------------------------------------------------------------------ public


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the message names the epoch and step)."""


def is_finished(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds the checkpoint of a completed run."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return False
    try:
        return bool(load_checkpoint(path).get("finished", False))
    except Exception:
        return False


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict (tensors on CPU, memory-mapped). It is our own file: not ``weights_only``."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def train(
    cfg: TrainConfig | dict,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: str = "auto",
    *,
    model: nn.Module | None = None,
) -> dict:
    """Train ``cfg`` into ``out_dir`` (see the module docstring); returns the last metrics record.

    ``model``: a backbone to use instead of building ``cfg.model`` (it needs ``feature_dim`` and
    must be built identically on resume; ``cfg.model`` is then only a label).
    """
    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    cfg.validate(check_registries=model is None)
    if progress not in _PROGRESS:
        raise ValueError(f"unknown progress {progress!r} (valid: {', '.join(_PROGRESS)})")
    device, rank, world, own_group = _setup_device_and_group(cfg.device)
    det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train(cfg, Path(out_dir), resume, progress, model, device, rank, world)
    finally:
        torch.use_deterministic_algorithms(det[0], warn_only=det[1])
        if world > 1:
            # DDP holds a reference cycle; free it (and its reducer) while the process group is alive,
            # else gloo can abort at interpreter exit ("terminate called without an active exception")
            gc.collect()
        if own_group:
            dist.destroy_process_group()


# -------------------------------------------------------------------------------------- the loop


def _train(cfg, out, resume, progress, model, device, rank, world) -> dict:
    if cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    amp = cfg.amp == "bf16" and device.type == "cuda"
    if cfg.amp == "bf16" and not amp:
        warnings.warn("amp='bf16' needs CUDA; training in float32 on CPU", stacklevel=3)
    _seed_everything(cfg.seed)
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    ck = None
    if resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        _check_same_config(ck["config"], cfg, ckpt_path)
        if ck.get("finished"):  # nothing to do: skip loading data and building the model
            return last_record(metrics_path)

    # data, model, head, optimiser --------------------------------------------------------------
    ds = _load_data(cfg)
    K = ds.num_classes
    if model is None:
        model = _build_model(cfg, ds)
    d = int(model.feature_dim)
    if cfg.method in ETF_METHODS and d < K:
        raise ValueError(
            f"method {cfg.method!r} needs feature_dim >= num_classes, got {d} < {K}: widen the model "
            f"(e.g. a last layer of width >= {K})"
        )
    head = build_head(cfg.method, d, K, **{**_head_kwargs(cfg), **cfg.head_kwargs})
    model.to(device)
    head.to(device)
    named = [("model." + n, p) for n, p in model.named_parameters()]
    named += [("head." + n, p) for n, p in head.named_parameters()]
    lr = cfg.agd_gain if cfg.optimizer == "agd" else cfg.lr
    opt = build_optimizer(cfg.optimizer, named, lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    head.after_step()  # re-establish the head's invariant after AGD's re-initialisation

    loader, eval_loaders, n_train = _make_loaders(cfg, ds, device, rank, world)
    spe = len(loader)
    sched = dict(total_steps=cfg.epochs * spe, schedule=cfg.schedule, warmup_steps=round(cfg.warmup_epochs * spe),
                 milestones=[m * spe for m in cfg.step_milestones], gamma=cfg.gamma)

    # start or resume ------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    epoch, step, wall, mid_epoch = 0, 0, 0.0, False
    fresh = ck is None
    if not fresh:
        model.load_state_dict(ck["model"])
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["optimizer"])
        loader.load_state_dict(ck["loader"])
        epoch, step, wall, mid_epoch = ck["epoch"], ck["step"], ck["wall_s"], ck["mid_epoch"]
        if rank == 0:
            _truncate(metrics_path, ck["metrics_bytes"])
        _set_rng_state(ck["rng"])
        del ck
    elif rank == 0:
        ckpt_path.unlink(missing_ok=True)  # a stale (e.g. finished) checkpoint must not outlive a fresh start
        metrics_path.write_text("")
    if rank == 0:
        _write_json_atomic(out / "config.json", cfg.to_dict())

    train_net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_net = torch.compile(train_net)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext

    # state shared by the helpers below --------------------------------------------------------------
    show = _Display(progress if rank == 0 else "none", cfg.epochs, spe)
    interrupt = _InterruptFlag(enabled=world == 1)
    check_every = 1 if device.type == "cpu" else cfg.check_every
    no_bad = torch.iinfo(torch.long).max
    first_bad = torch.full((), no_bad, dtype=torch.long, device=device)
    last = {}

    def evaluate_now() -> dict:
        nonlocal last
        rec = {"epoch": epoch, "step": step, "wall_s": wall, "lr": opt.param_groups[0]["lr"]}
        rec.update(evaluate(model, head, eval_loaders, autocast))
        last = rec
        if rank == 0:
            with metrics_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    def save(finished: bool = False) -> None:
        if rank != 0:
            return
        state = {
            "version": 1, "config": cfg.to_dict(), "epoch": epoch, "step": step, "wall_s": wall,
            "mid_epoch": mid_epoch, "finished": finished, "model": model.state_dict(),
            "head": head.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict(),
            "rng": _get_rng_state(), "metrics_bytes": metrics_path.stat().st_size,
        }
        _save_atomic(state, ckpt_path)

    def check_finite(force: bool = False) -> None:
        if not force and step % check_every:
            return
        bad = first_bad.clone()
        if world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        if int(bad) != no_bad:
            e = 1 + (int(bad) - 1) // spe
            raise NonFiniteLossError(
                f"non-finite loss at epoch {e}, step {int(bad)} (global step, counted from 1); stopping. "
                f"The last good checkpoint is {ckpt_path} (lower the learning rate, or check the data)"
            )

    def train_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal step, first_bad
        batch = step - epoch * spe  # index of this global batch within the epoch
        set_lr(opt, lr_factor(step, **sched))
        with autocast():
            feats = train_net(x)
        logits = head(feats, y)
        if world == 1:
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            loss_sum = loss.detach() * len(y)
        else:  # DDP averages over ranks: scale so the result is the global batch's mean loss
            loss_sum = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction="sum")
            loss = loss_sum * (world / _global_batch_size(batch, cfg.batch_size, n_train, spe))
            loss_sum = loss_sum.detach()
        bad = ~torch.isfinite(loss_sum)
        first_bad = torch.where(bad & (first_bad == no_bad), step + 1, first_bad)  # no host sync
        step += 1
        check_finite()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _all_reduce_grads(head, world)
        opt.step()
        head.after_step()
        return loss_sum, logits.detach()

    if fresh:
        set_lr(opt, lr_factor(0, **sched))  # so the epoch-0 record shows the first step's lr
    try:
        with interrupt:
            if fresh:
                show.record(evaluate_now())
                save(finished=cfg.epochs == 0)
                interrupt.raise_if_set()
            while epoch < cfg.epochs:
                if not mid_epoch:
                    loader.set_epoch(epoch)
                mid_epoch = True
                model.train()
                head.train()
                running = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
                t0 = time.perf_counter()
                show.start_epoch(epoch + 1, initial=loader.position)
                for x, y in loader:
                    where = f"epoch {epoch + 1}, step {step + 1}"
                    try:
                        loss, logits = train_step(x, y)  # loss: the sum over this rank's samples
                    except NonFiniteLossError:
                        raise
                    except ValueError as e:
                        raise ValueError(f"training failed at {where}: {e}") from e
                    except RuntimeError as e:
                        raise RuntimeError(f"training failed at {where}: {e}") from e
                    running += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double(),
                                            torch.full((), len(y), dtype=torch.float64, device=device)])
                    show.step(running)
                    # Ctrl-C: checkpoint at this step, inside the epoch (after its last step, the
                    # end-of-epoch checkpoint below serves, so a resume does not start a new pass)
                    if interrupt.is_set() and loader.position < spe:
                        check_finite(force=True)
                        wall += _elapsed(t0, device)
                        save()
                        interrupt.raise_if_set()
                check_finite(force=True)
                wall += _elapsed(t0, device)
                epoch += 1
                mid_epoch = False
                if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                    show.record(evaluate_now())
                else:
                    show.running(epoch, running, wall)
                save(finished=epoch == cfg.epochs)
                if epoch < cfg.epochs:
                    interrupt.raise_if_set()
    finally:
        show.close()
    if world > 1:
        dist.barrier()
    return last or last_record(metrics_path)


# ------------------------------------------------------------------------------------- evaluation


def _forward_batches(model: nn.Module, loader, autocast):
    for x, y in loader:
        with autocast():
            f = model(x)
        yield f.float(), y


def _loss_acc_sums(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(cross-entropy sum, correct, count) in float64."""
    return torch.stack([F.cross_entropy(logits.double(), y, reduction="sum"), (logits.argmax(1) == y).sum().double(),
                        torch.full((), len(y), dtype=torch.float64, device=logits.device)])


def _train_split(model, head, loader, autocast) -> tuple[torch.Tensor, dict]:
    """Loss/accuracy sums and NC metrics of the training split. The 2nd NC pass reuses the first
    pass's features when they fit in ``_CACHE_BYTES``, else runs the backbone again."""
    from ..metrics import nc_metrics_streaming

    state: dict[str, Any] = {"sums": 0, "cache": [], "bytes": 0}

    def first_pass():
        for f, y in _forward_batches(model, loader, autocast):
            state["sums"] = state["sums"] + _loss_acc_sums(head(f), y)
            h = head.transform(f)
            state["bytes"] += h.numel() * h.element_size()
            if state["cache"] is not None and state["bytes"] <= _CACHE_BYTES:
                state["cache"].append((h, y))
            else:
                state["cache"] = None
            yield h, y

    def second_pass():
        if state["cache"] is not None:
            return state["cache"]
        return ((head.transform(f), y) for f, y in _forward_batches(model, loader, autocast))

    passes = iter((first_pass, second_pass))
    nc = nc_metrics_streaming(lambda: next(passes)(), head.weight, head.bias, head.num_classes, head.feature_dim)
    nc.pop("accuracy", None)  # the same as train_acc
    return state["sums"], nc


@torch.no_grad()
def evaluate(model: nn.Module, head: nn.Module, loaders: dict[str, Any], autocast=nullcontext) -> dict:
    """``{split}_loss`` (plain cross-entropy) and ``{split}_acc`` for every loader, with model and head
    in eval mode, plus the NC metrics of the ``"train"`` split on ``h̃ = head.transform(model(x))``
    with ``head.weight, head.bias``. Under ``torch.distributed`` each rank passes its shard and the
    sums are all-reduced. ``test_loss``/``test_acc`` are ``None`` without a ``"test"`` loader."""
    modes = model.training, head.training
    model.eval()
    head.eval()
    out: dict[str, Any] = {}
    nc: dict[str, float] = {}
    try:
        for split, loader in loaders.items():
            if split == "train":
                sums, nc = _train_split(model, head, loader, autocast)
            else:
                sums = sum(_loss_acc_sums(head(f), y) for f, y in _forward_batches(model, loader, autocast))
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(sums)
            loss_sum, correct, count = sums.tolist()
            out[f"{split}_loss"] = loss_sum / count
            out[f"{split}_acc"] = correct / count
        out.setdefault("test_loss", None)
        out.setdefault("test_acc", None)
        out.update(nc)
    finally:
        model.train(modes[0])
        head.train(modes[1])
    return out


# ---------------------------------------------------------------------------------------- helpers


def _setup_device_and_group(name: str) -> tuple[torch.device, int, int, bool]:
    """(device, rank, world size, whether we created the process group)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use device='cpu' or 'auto'")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    own = False
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        own = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if not use_cuda:
        return torch.device("cpu"), rank, world, own
    index = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else torch.cuda.current_device()
    return torch.device("cuda", index), rank, world, own


def _load_data(cfg: TrainConfig):
    from .data import load_dataset

    kw: dict[str, Any] = {}
    if cfg.test_per_class is not None:
        kw["test_per_class"] = cfg.test_per_class
    if cfg.dataset == "ufm":
        kw.update(num_classes=cfg.num_classes, samples_per_class=cfg.samples_per_class)
    return load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed, train_per_class=cfg.train_per_class, **kw)


def _build_model(cfg: TrainConfig, ds) -> nn.Module:
    from .models import build_model

    kw = dict(cfg.model_kwargs)
    if cfg.model == "ufm":
        kw.setdefault("num_samples", len(ds.y_train))
        kw.setdefault("feature_dim", cfg.feature_dim)
    return build_model(cfg.model, ds.input_shape, ds.num_classes, **kw)


def _head_kwargs(cfg: TrainConfig) -> dict:
    """The config fields that the method's head takes (``heads.head_options``)."""
    fields = dict(temperature=cfg.temperature, delta=cfg.delta, solver=cfg.solver, seed=cfg.seed,
                  mean_schedule=cfg.mean_schedule, alpha_min=cfg.alpha_min, ema_alpha=cfg.ema_alpha)
    options = head_options(cfg.method)
    return {k: v for k, v in fields.items() if k in options}


def _has_test(ds) -> bool:
    return ds.name != "ufm" and ds.y_test is not None and len(ds.y_test) > 0


def _make_loaders(cfg: TrainConfig, ds, device, rank: int, world: int) -> tuple[Any, dict, int]:
    """(training loader, {"train", "test"} evaluation loaders, training-set size)."""
    from .data.loader import DatasetLoader, TensorLoader

    lazy = ds.x_train is None
    n_train = len(ds.train_set) if lazy else len(ds.y_train)
    # under DDP a final global batch smaller than the world would leave a rank an empty slice: drop it
    drop_last = world > 1 and 0 < n_train % cfg.batch_size < world
    if lazy:
        if cfg.stratified or cfg.augment is not None:
            raise ValueError(f"dataset {cfg.dataset!r} is file-backed: stratified and augment need in-memory "
                             "data (its own transforms augment it); set stratified=false, augment=none")
        common = dict(seed=cfg.seed, device=device, rank=rank, world_size=world, num_workers=cfg.num_workers)
        loader = DatasetLoader(ds.train_set, cfg.batch_size, shuffle=True, drop_last=drop_last, **common)
        evals = {"train": DatasetLoader(ds.train_set, cfg.eval_batch_size, shuffle=False, **common)}
        if ds.test_set is not None and len(ds.test_set):
            evals["test"] = DatasetLoader(ds.test_set, cfg.eval_batch_size, shuffle=False, **common)
        return loader, evals, n_train
    loader = TensorLoader(ds.x_train, ds.y_train, cfg.batch_size, shuffle=True, stratified=cfg.stratified,
                          seed=cfg.seed, augment=cfg.augment, drop_last=drop_last, device=device, rank=rank,
                          world_size=world)
    common = dict(shuffle=False, device=device, rank=rank, world_size=world)
    evals = {"train": TensorLoader(ds.x_train, ds.y_train, cfg.eval_batch_size, **common)}
    if _has_test(ds):
        evals["test"] = TensorLoader(ds.x_test, ds.y_test, cfg.eval_batch_size, **common)
    return loader, evals, n_train


def _global_batch_size(batch: int, batch_size: int, n: int, batches_per_epoch: int) -> int:
    """Samples in global batch ``batch`` of an epoch (the last one may be short; with drop_last it is full)."""
    return min(batch_size, n - batch_size * batch)


def _all_reduce_grads(module: nn.Module, world: int) -> None:
    """Average the gradients of ``module``'s parameters over ranks (the head is not inside DDP)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global RNG user code draws from)
    torch.manual_seed(seed)


def _get_rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # noqa: NPY002
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`files.atomic_write` (temporary file, fsync, ``os.replace``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (the records up to the checkpoint)."""
    if not path.exists():
        path.write_text("")
        return
    if path.stat().st_size > size:
        with path.open("r+b") as f:
            f.truncate(size)


def _check_same_config(saved: dict, cfg: TrainConfig, path: Path) -> None:
    now = json.loads(json.dumps(cfg.to_dict()))
    saved = json.loads(json.dumps(with_defaults(saved)))
    diff = sorted(k for k in set(saved) | set(now) if k not in RUNTIME_FIELDS and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"{path} was written by a different config (differs in: {', '.join(diff)}); "
            "pass resume=False to start over, or use another out_dir"
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

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def is_set(self) -> bool:
        return self._set

    def raise_if_set(self) -> None:
        if self._set:
            raise KeyboardInterrupt


class _Display:
    """tqdm bar (terminal) or fixed-width table (logs), or nothing."""

    COLUMNS = ("epoch", "train_loss", "train_acc", "test_acc", "nc1", "time_s")

    def __init__(self, mode: str, epochs: int, steps_per_epoch: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "table"
        self.mode, self.epochs, self.spe = mode, epochs, steps_per_epoch
        self.bar = None
        self._header = False
        self._since = 0

    def _row(self, cells: list[str]) -> None:
        if not self._header:
            print("  ".join(f"{c:>10}" for c in self.COLUMNS), flush=True)
            self._header = True
        print("  ".join(f"{c:>10}" for c in cells), flush=True)

    def start_epoch(self, epoch: int, initial: int = 0) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.close()
            self.bar = tqdm(total=self.spe, initial=initial, desc=f"epoch {epoch}/{self.epochs}", leave=False,
                            dynamic_ncols=True)
        self._since = 0

    def step(self, running: torch.Tensor) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        self._since += 1
        if self._since % 10 == 1:  # reading the sums syncs the device: not every step
            loss, correct, n = running.tolist()
            self.bar.set_postfix(loss=f"{loss / n:.4f}", acc=f"{correct / n:.4f}")

    def record(self, rec: dict) -> None:
        if self.mode == "none":
            return
        test = "-" if rec.get("test_acc") is None else f"{rec['test_acc']:.4f}"
        cells = [str(rec["epoch"]), f"{rec['train_loss']:.4f}", f"{rec['train_acc']:.4f}", test,
                 f"{rec.get('nc1', float('nan')):.4g}", f"{rec['wall_s']:.1f}"]
        self._emit(cells)

    def running(self, epoch: int, running: torch.Tensor, wall: float) -> None:
        if self.mode == "none":
            return
        loss, correct, n = running.tolist()
        self._emit([str(epoch), f"{loss / n:.4f}", f"{correct / n:.4f}", "-", "-", f"{wall:.1f}"])

    def _emit(self, cells: list[str]) -> None:
        if self.mode == "table":
            self._row(cells)
        elif self.mode == "bar":
            from tqdm.auto import tqdm

            self.close()
            tqdm.write("  ".join(f"{k}={v}" for k, v in zip(self.COLUMNS, cells)), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
