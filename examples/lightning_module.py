"""The nearest-ETF head in a PyTorch Lightning module.

    pip install lightning        # or pytorch-lightning
    python examples/lightning_module.py --epochs 5

The head is a submodule like any other (its state, running class means included, is in the checkpoint).
Two things are specific to it: `training_step` passes the targets to the head, and the head's
`after_step()` runs after each optimiser step (`on_train_batch_end`). NC metrics of the training set are
logged at the end of each epoch.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ncguide import NearestETFHead, nc_metrics

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError as e:
        print(f"this example needs PyTorch Lightning, which does not import here ({type(e).__name__}: {e}); "
              "pip install lightning", file=sys.stderr)
        raise SystemExit(2) from None


class ETFClassifier(pl.LightningModule):
    def __init__(self, in_dim: int, num_classes: int, feature_dim: int = 64, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(in_dim, 128), nn.ReLU(), nn.Linear(128, feature_dim))
        self.head = NearestETFHead(feature_dim, num_classes)

    def forward(self, x, targets=None):
        return self.head(self.backbone(x), targets)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x, y), y)  # training: the head needs the targets
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.head.after_step()  # after the optimiser step

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def on_train_epoch_end(self):
        x, y = self.trainer.train_dataloader.dataset.tensors
        was_training = self.training
        self.eval()
        with torch.no_grad():  # h~ = head.transform(h) is what the classifier sees
            metrics = nc_metrics(self.head.transform(self.backbone(x.to(self.device))), y.to(self.device),
                                 self.head.weight, self.head.bias)
        self.train(was_training)
        self.log_dict({"nc1": metrics["nc1"], "nc2_w": metrics["nc2_w"], "nc3": metrics["nc3"]})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def make_data(k: int = 5, per_class: int = 200, dim: int = 32, seed: int = 0):
    """K Gaussian clusters (the same centres for every seed; `seed` draws the samples): (x, y)."""
    centres = torch.randn(k, dim, generator=torch.Generator().manual_seed(0))
    y = torch.arange(k).repeat_interleave(per_class)
    return centres[y] + torch.randn(len(y), dim, generator=torch.Generator().manual_seed(1 + seed)), y


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args(argv)
    pl.seed_everything(0, verbose=False)
    x, y = make_data()
    xv, yv = make_data(per_class=50, seed=1)
    train = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=250)
    model = ETFClassifier(x.shape[1], int(y.max()) + 1)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train, val)
    results = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print("  ".join(f"{k} {v:.4g}" for k, v in sorted(results.items())))
    return results


if __name__ == "__main__":
    main()
