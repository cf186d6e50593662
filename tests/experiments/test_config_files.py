"""Every shipped config parses, resolves and builds its data, model and heads (no training).

External data sets (CIFAR, STL-10, ImageNet) are not present here: for them we check that the loader
fails with its clear missing-data ValueError (downloads disabled) and build the model from the data
set's known input shape. No forward pass at 224×224.
"""

from pathlib import Path

import pytest
import torch

from ncguide.experiments.cli import _COMPARE_KEYS
from ncguide.experiments.compare import parse_seeds
from ncguide.experiments.config import TrainConfig, load_config
from ncguide.experiments.data import load_dataset
from ncguide.experiments.data.ondisk import find_fashion_mnist
from ncguide.experiments.models import build_model
from ncguide.experiments.shipped_configs import CONFIG_DIR
from ncguide.heads import METHODS, build_head

CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
# (input shape, classes) of the data sets that are not shipped with the package
EXTERNAL = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "stl10": ((3, 96, 96), 10),
            "imagenet": ((3, 224, 224), 1000)}
PAPER = {  # file -> (dataset, model, classes, feature dim), the paper's experiments
    "ufm-k10.yaml": ("ufm", "ufm", 10, 512), "ufm-k100.yaml": ("ufm", "ufm", 100, 512),
    "ufm-k200.yaml": ("ufm", "ufm", 200, 512),
    "ufm-k1000.yaml": ("ufm", "ufm", 1000, 1024),  # d = 512 < K is impossible for an ETF head
    "cifar10-resnet18.yaml": ("cifar10", "resnet18", 10, 512),
    "cifar100-resnet18.yaml": ("cifar100", "resnet18", 100, 512),
    "stl10-resnet18.yaml": ("stl10", "resnet18", 10, 512),
    "cifar10-vgg13.yaml": ("cifar10", "vgg13", 10, 512), "cifar100-vgg13.yaml": ("cifar100", "vgg13", 100, 512),
    "imagenet-resnet50.yaml": ("imagenet", "resnet50", 1000, 2048),
}
CPU_SIZED = ["demo.yaml", "mnist1d.yaml", "digits.yaml", "fashion-mnist.yaml"]


def _resolve(path: Path) -> tuple[TrainConfig, list[str], list[int]]:
    """The base config, methods and seeds of a compare file (its other compare keys are checked elsewhere:
    test_paper_protocol.py resolves the paper's files through ``--print-config``)."""
    d = load_config(path)
    methods, seeds = d.pop("methods"), parse_seeds(d.pop("seeds"))
    for key in _COMPARE_KEYS:
        d.pop(key, None)
    return TrainConfig.from_dict(d), methods, seeds


def test_expected_configs_exist():
    names = {p.name for p in CONFIGS}
    assert set(PAPER) | set(CPU_SIZED) <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_config_builds(path, tmp_path):
    cfg, methods, seeds = _resolve(path)
    assert methods and set(methods) <= set(METHODS) and seeds
    assert cfg.temperature == 5.0 and cfg.delta == 1e-3  # the paper's values, in every config
    if cfg.dataset in EXTERNAL:
        with pytest.raises(ValueError, match="not found|needs folders"):
            load_dataset(cfg.dataset, data_dir=tmp_path, download=False)
        shape, K = EXTERNAL[cfg.dataset]
        n = None
    else:
        if cfg.dataset == "fashion-mnist" and find_fashion_mnist(cfg.data_dir) is None:
            pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist, or the IDX files in "
                        "$NCGUIDE_CACHE/fashion-mnist)")
        kw = {}
        if cfg.dataset == "ufm":
            kw = {"num_classes": cfg.num_classes, "samples_per_class": cfg.samples_per_class}
        ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=0, train_per_class=cfg.train_per_class,
                          test_per_class=cfg.test_per_class, **kw)
        shape, K, n = ds.input_shape, ds.num_classes, len(ds.y_train)
        if cfg.train_per_class is not None:
            assert n == cfg.train_per_class * K
    model_kwargs = dict(cfg.model_kwargs)
    if cfg.model == "ufm":
        model_kwargs.update(num_samples=n, feature_dim=cfg.feature_dim)
    torch.manual_seed(0)
    model = build_model(cfg.model, shape, K, **model_kwargs)
    for method in methods:
        head = build_head(method, model.feature_dim, K)
        assert head.weight.shape == (K, model.feature_dim)
    if path.name in PAPER:
        dataset, name, classes, dim = PAPER[path.name]
        assert (cfg.dataset, cfg.model, K, model.feature_dim) == (dataset, name, classes, dim)
        assert (cfg.epochs, len(seeds)) == (200, 5)
    if cfg.dataset != "imagenet":  # one small forward pass: the features have the promised width
        model.eval()
        x = torch.arange(2) if cfg.model == "ufm" else torch.randn(2, *shape)
        with torch.no_grad():
            assert model(x).shape == (2, model.feature_dim)


@pytest.mark.parametrize("name", CPU_SIZED)
def test_cpu_configs_stay_small(name):
    """Sized for 2 CPU cores: offline data, small models, CPU-friendly epochs."""
    cfg, methods, seeds = _resolve(CONFIG_DIR / name)
    assert cfg.dataset in ("mnist1d", "digits", "fashion-mnist")
    assert cfg.epochs <= 40 and len(seeds) >= 3 and {"standard", "fixed-etf", "nearest-etf"} <= set(methods)
