"""What a training run prints: a tqdm bar on a terminal, a fixed-width table in logs, or nothing.

``mode="auto"`` picks the bar when ``sys.stderr`` is a terminal, else the table. The table has one line
per epoch, ``epoch, train_loss, train_acc, test_acc, nc1, time_s``: evaluation values on evaluation
epochs; on the others the running averages over the epoch's training batches (rank 0's shard) and ``-``.
"""

from __future__ import annotations

import sys

import torch

__all__ = ["PROGRESS_MODES", "Progress"]

PROGRESS_MODES = ("auto", "bar", "table", "none")


class Progress:
    """tqdm bar (terminal), fixed-width table (logs), or nothing (``mode="none"``)."""

    COLUMNS = ("epoch", "train_loss", "train_acc", "test_acc", "nc1", "time_s")

    def __init__(self, mode: str, epochs: int, steps_per_epoch: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "table"
        self.mode, self.epochs, self.spe = mode, epochs, steps_per_epoch
        self.bar = None
        self._header = False
        self._since = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def start_epoch(self, epoch: int, initial: int = 0) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.close()
            self.bar = tqdm(total=self.spe, initial=initial, desc=f"epoch {epoch}/{self.epochs}", leave=False,
                            dynamic_ncols=True)
        self._since = 0

    def step(self, running: torch.Tensor) -> None:
        """One training step done; ``running`` = (loss sum, correct, count) of the epoch so far."""
        if self.bar is None:
            return
        self.bar.update(1)
        self._since += 1
        if self._since % 10 == 1:  # reading the sums syncs the device: not every step
            loss, correct, n = running.tolist()
            self.bar.set_postfix(loss=f"{loss / n:.4f}", acc=f"{correct / n:.4f}")

    def record(self, rec: dict) -> None:
        """An evaluation record (a line of metrics.jsonl)."""
        if self.mode == "none":
            return
        test = "-" if rec.get("test_acc") is None else f"{rec['test_acc']:.4f}"
        self._emit([str(rec["epoch"]), f"{rec['train_loss']:.4f}", f"{rec['train_acc']:.4f}", test,
                    f"{rec.get('nc1', float('nan')):.4g}", f"{rec['wall_s']:.1f}"])

    def running(self, epoch: int, running: torch.Tensor, wall_s: float) -> None:
        """An epoch without evaluation: its running training averages."""
        if self.mode == "none":
            return
        loss, correct, n = running.tolist()
        self._emit([str(epoch), f"{loss / n:.4f}", f"{correct / n:.4f}", "-", "-", f"{wall_s:.1f}"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _emit(self, cells: list[str]) -> None:
        if self.mode == "table":
            if not self._header:
                print("  ".join(f"{c:>10}" for c in self.COLUMNS), flush=True)
                self._header = True
            print("  ".join(f"{c:>10}" for c in cells), flush=True)
        elif self.mode == "bar":
            from tqdm.auto import tqdm

            self.close()
            tqdm.write("  ".join(f"{k}={v}" for k, v in zip(self.COLUMNS, cells)), file=sys.stderr)
