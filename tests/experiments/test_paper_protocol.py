"""The paper's protocol as configuration: bias-free backbones (``bias_free``), the canonical fixed ETF
(``fixed_etf``), AGD (gain, checks before training), per-method settings through ``variants:``, and the
files of ``ncguide/configs/paper/`` as ``ncguide compare --print-config`` resolves them."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import ncguide
from ncguide.experiments.build import build_backbone, build_run_head, check_buildable, load_data
from ncguide.experiments.checkpoint import load_checkpoint
from ncguide.experiments.cli import main
from ncguide.experiments.compare import run_compare
from ncguide.experiments.config import ConfigError, TrainConfig, with_defaults
from ncguide.experiments.data.ondisk import find_fashion_mnist
from ncguide.experiments.models import MODELS, build_model
from ncguide.experiments.optim import AGD, agd_scale, build_optimizer
from ncguide.experiments.train import train
from ncguide.heads import METHODS, FixedETFHead

PAPER_DIR = Path(ncguide.__file__).parent / "configs" / "paper"
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

# ------------------------------------------------------------------------------------ bias_free

BACKBONES = [  # (name, input shape, options, device): every registered model, small where it can be
    ("ufm", (), dict(num_samples=12, feature_dim=16), "cpu"),
    ("mlp", (20,), dict(widths=(16, 8)), "cpu"),
    ("cnn", (1, 40), dict(channels=8, feature_dim=16), "cpu"),
    ("cnn1d", (1, 40), dict(channels=8, feature_dim=16), "cpu"),
    ("cnn2d", (3, 16, 16), dict(channels=(8, 16), feature_dim=16), "cpu"),
    ("resnet18", (3, 32, 32), dict(width=0.125), "cpu"),
    ("resnet34", (3, 64, 64), dict(width=0.125, stem="imagenet"), "cpu"),
    ("resnet50", (3, 32, 32), dict(width=0.125), "cpu"),
    ("vgg13", (3, 32, 32), {}, "cpu"),
    pytest.param("vgg13", (3, 64, 64), dict(style="imagenet"), "meta", marks=pytest.mark.slow),  # 129M: meta
]


def test_every_backbone_is_covered():
    assert {(b.values if hasattr(b, "values") else b)[0] for b in BACKBONES} == set(MODELS)


@pytest.mark.parametrize("name, shape, kwargs, device", BACKBONES, ids=lambda v: v if isinstance(v, str) else "")
def test_bias_free_backbone_keeps_exactly_its_weights(name, shape, kwargs, device):
    with torch.device(device):
        torch.manual_seed(0)
        default = build_model(name, shape, 10, **kwargs)
        torch.manual_seed(0)
        free = build_model(name, shape, 10, bias_free=True, **kwargs)
    weights = {n: p for n, p in default.named_parameters() if p.dim() >= 2}
    kept = dict(free.named_parameters())
    assert kept.keys() == weights.keys()  # the weight matrices and kernels, nothing else
    if device == "cpu":
        assert all(torch.equal(kept[n], weights[n]) for n in kept)  # initialised as in the default model
    for m in free.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert not m.affine and m.weight is None and m.bias is None and m.track_running_stats
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            assert m.bias is None
    # the default is as it was: every batch norm keeps its scale and shift
    assert all(m.affine and m.weight is not None for m in default.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    x = torch.randperm(12)[:6] if name == "ufm" else torch.randn(6, *shape, device=device)
    assert free.train()(x).shape == (6, free.feature_dim)


def test_bias_free_reaches_the_backbone_and_the_standard_heads():
    ds = load_data(TrainConfig(dataset="digits"))
    model = build_backbone(TrainConfig(dataset="digits", model="mlp", bias_free=True), ds)
    assert all(p.dim() == 2 for p in model.parameters())
    for method in ("standard", "standard-plain"):
        head = build_run_head(TrainConfig(method=method, bias_free=True), 32, 10)
        assert [n for n, _ in head.named_parameters()] == ["linear.weight"]
        assert torch.equal(head.bias, torch.zeros(10))  # the classifier's bias is 0: no parameter
        assert build_run_head(TrainConfig(method=method), 32, 10).linear.bias is not None  # default: as today


def test_new_fields_default_to_todays_behaviour():
    assert (TrainConfig().bias_free, TrainConfig().fixed_etf) == (False, "random")
    saved = TrainConfig(method="fixed-etf").to_dict()  # a run saved before the fields existed
    del saved["bias_free"], saved["fixed_etf"]
    assert with_defaults(saved) == TrainConfig(method="fixed-etf").to_dict()
    # the fixed-ETF head of a default config: FixedETFHead's own default, a rotation drawn from the seed
    assert torch.equal(build_run_head(TrainConfig(method="fixed-etf", seed=3), 16, 5).weight,
                       FixedETFHead(16, 5, seed=3).weight)


# ------------------------------------------------------------------------------------ fixed_etf


@pytest.mark.parametrize("d, K", [(16, 5), (512, 10), (100, 100)])
def test_canonical_fixed_etf_is_the_papers_formula(d, K):
    """``W = sqrt(K/(K-1)) (I - 11ᵀ/K) eye(K, d)``, whatever the seed."""
    M = torch.eye(K, dtype=torch.float64) - torch.ones(K, K, dtype=torch.float64) / K
    want = math.sqrt(K / (K - 1)) * M @ torch.eye(K, d, dtype=torch.float64)
    for seed in (0, 7):
        W = build_run_head(TrainConfig(method="fixed-etf", fixed_etf="canonical", seed=seed), d, K).weight.double()
        # float32 entries from one centring and one scaling of 0/1 values: a few roundings of numbers <= 1
        assert torch.allclose(W, want, rtol=0, atol=4 * EPS32)
    R = build_run_head(TrainConfig(method="fixed-etf", fixed_etf="random", seed=7), d, K).weight.double()
    # a random rotation is an ETF too (W Wᵀ = K/(K-1) M; each entry a float32 dot product of unit-norm rows
    # of length d) but not the canonical one
    assert torch.allclose(R @ R.T, K / (K - 1) * M, rtol=0, atol=2 * d * EPS32)
    assert (R - want).abs().max() > 0.1


@pytest.mark.parametrize("kw, key", [
    ({"fixed_etf": "axis"}, "fixed_etf"),
    ({"head_kwargs": {"rotation": "canonical"}}, "head_kwargs.rotation"),
    ({"bias_free": True, "model_kwargs": {"bias": True}}, "model_kwargs.bias"),
    ({"bias_free": True, "method": "standard", "head_kwargs": {"bias": True}}, "head_kwargs.bias"),
])
def test_bad_or_contradicting_settings_name_their_key(kw, key):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(kw)
    assert e.value.key == key


# ------------------------------------------------------------------------------------------ AGD


@pytest.mark.parametrize("model, dataset, kwargs", [
    ("mlp", "digits", {"widths": [32]}), ("cnn1d", "mnist1d", {"channels": 8}), ("cnn2d", "fashion-mnist", {}),
    ("resnet18", "cifar10", {"width": 0.125}), ("vgg13", "cifar10", {}),
])
def test_agd_is_refused_with_biases_and_accepted_bias_free_for_every_method(model, dataset, kwargs):
    if dataset == "fashion-mnist" and find_fashion_mnist(None) is None:
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
    base = dict(dataset=dataset, model=model, model_kwargs=kwargs, optimizer="agd", weight_decay=0.0, device="cpu")
    with pytest.raises(ConfigError, match="bias_free=true") as e:
        check_buildable(TrainConfig.from_dict({**base, "method": "fixed-etf"}))
    assert e.value.key == "bias_free"
    for method in METHODS:
        check_buildable(TrainConfig.from_dict({**base, "method": method, "bias_free": True}))


def test_cli_refuses_agd_with_biases_in_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["compare", "--dataset", "digits", "--model", "mlp", "--methods", "standard", "--seeds", "1",
            "--set", "optimizer=agd", "--set", "weight_decay=0", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncguide: error:") and "bias_free" in err and err.count("\n") == 1
    assert not out.exists()


def test_agd_gain_scales_the_step_and_a_tap_without_gradient_stays():
    """The paper's code multiplies AGD's step by its gain (10) and leaves a kernel tap whose gradient is 0 where
    it is (its nan_to_num of s/0)."""
    torch.manual_seed(0)
    w0 = [torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 3, 2, 2, dtype=torch.float64)]
    grads = [torch.randn_like(w) for w in w0]
    grads[1][:, :, 0, 1] = 0
    steps = {}
    for gain in (1.0, 10.0):
        params = [nn.Parameter(w.clone()) for w in w0]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        AGD(params, lr=gain).step()
        steps[gain] = [p.detach() - w for p, w in zip(params, w0)]
    big = max(float(w.abs().max()) for w in w0)
    for one, ten in zip(steps[1.0], steps[10.0]):  # differences of numbers <= big: a few roundings of big
        assert torch.allclose(ten, 10 * one, rtol=0, atol=40 * EPS64 * big)
    assert torch.equal(steps[10.0][1][:, :, 0, 1], torch.zeros(5, 3))
    assert bool(torch.isfinite(steps[10.0][1]).all()) and float(steps[10.0][1][:, :, 0, 0].abs().sum()) > 0


def test_agd_depth_counts_the_weights_it_is_given():
    """As in the paper's code: the backbone's weights, plus the standard head's matrix (ETF heads have none)."""
    cfg = dict(dataset="digits", model="mlp", model_kwargs={"widths": [32, 16]}, bias_free=True)
    model = build_backbone(TrainConfig.from_dict(cfg), load_data(TrainConfig(dataset="digits")))
    for method, head_weights in (("standard", 1), ("fixed-etf", 0), ("nearest-etf", 0)):
        head = build_run_head(TrainConfig.from_dict({**cfg, "method": method}), 16, 10)
        opt = build_optimizer("agd", [*model.named_parameters(), *head.named_parameters()], 10.0)
        assert opt.depth == 2 + head_weights


def test_the_loop_starts_a_bias_free_cnn_from_agds_orthogonal_kernels(tmp_path):
    cfg = TrainConfig.from_dict(dict(dataset="mnist1d", model="cnn1d", model_kwargs={"channels": 8, "feature_dim": 16},
                                     method="fixed-etf", optimizer="agd", agd_gain=10.0, weight_decay=0.0,
                                     bias_free=True, epochs=0, device="cpu"))
    train(cfg, tmp_path, progress="none")
    weights = {k: v for k, v in load_checkpoint(tmp_path / "checkpoint.pt")["model"].items() if v.dim() >= 2}
    assert len(weights) == 4  # three convolutions and the linear layer
    for w in weights.values():  # every tap: all singular values equal agd_scale (float32 QR: relative 1e-6)
        taps = w.double().reshape(w.shape[0], w.shape[1], -1)
        for k in range(taps.shape[2]):
            sv = torch.linalg.svdvals(taps[:, :, k])
            assert torch.allclose(sv, torch.full_like(sv, agd_scale(w.shape)), rtol=8 * max(w.shape) * EPS32)


# --------------------------------------------------------------------------- per-method settings


@pytest.mark.slow
def test_stratified_batches_for_one_method_through_variants(tmp_path):
    """The paper's arm: stratified batches for nearest-ETF only, with AGD at gain 10 on a bias-free network;
    a variant named after a method keeps the method's name (and folder), a named one works as before."""
    base = dict(dataset="digits", model="mlp", model_kwargs={"widths": [64]}, epochs=2, batch_size=256,
                optimizer="agd", agd_gain=10.0, weight_decay=0.0, schedule="constant", bias_free=True,
                fixed_etf="canonical", device="cpu")
    variants = {"nearest-etf": {"stratified": True}, "fixed-etf-strat": {"method": "fixed-etf", "stratified": True}}
    methods = ["standard", "fixed-etf", "nearest-etf", "fixed-etf-strat"]
    out = tmp_path / "out"
    logs: list[str] = []
    summary = run_compare(base, methods, [1], out, variants=variants, progress="none", log=logs.append)
    saved = {m: load_checkpoint(out / "runs" / m / "seed-1" / "checkpoint.pt")["config"] for m in methods}
    assert {m: (c["method"], c["stratified"]) for m, c in saved.items()} == {
        "standard": ("standard", False), "fixed-etf": ("fixed-etf", False), "nearest-etf": ("nearest-etf", True),
        "fixed-etf-strat": ("fixed-etf", True)}
    assert list(summary["methods"]) == methods
    last = {m: summary["methods"][m]["final"]["train_acc"]["median"] for m in methods}
    assert min(last.values()) > 0.8, last  # every head learns under AGD's step (chance is 0.1)
    logs.clear()
    run_compare(base, methods, [1], out, variants=variants, progress="none", log=logs.append)  # the same: reused
    assert sum("reused finished run" in line for line in logs) == 4
    with pytest.raises(ValueError, match="different config"):  # without the variant, runs/nearest-etf is not it
        run_compare(base, ["standard", "nearest-etf"], [1], out, variants={"fixed-etf-strat": variants[
            "fixed-etf-strat"]}, progress="none", log=logs.append)


def test_cli_variant_named_after_a_method(tmp_path, capsys):
    argv = ["compare", "--dataset", "digits", "--model", "mlp", "--methods", "standard,nearest-etf",
            "--variant", "nearest-etf:stratified=true", "--print-config"]
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["variants"] == {"nearest-etf": {"method": "nearest-etf", "stratified": True}}
    assert shown["stratified"] is False and shown["methods"] == ["standard", "nearest-etf"]


def test_train_with_a_config_file_of_variants_says_it_does_not_apply_them(tmp_path, capsys):
    """``variants:`` is read by ``compare`` only: ``ncguide train`` says so in one line, with the flags that give
    the trained method the comparison's settings; not when no variant is of the trained method."""
    argv = ["train", "--config", "paper/ufm-k10", "--print-config"]
    assert main([*argv, "--method", "nearest-etf"]) == 0
    out = capsys.readouterr()
    [line] = [x for x in out.err.splitlines() if "variants:" in x]
    assert line == ("ncguide: warning: variants: in paper/ufm-k10 applies to `ncguide compare` only; `ncguide train` "
                    "trains the file's base settings for nearest-etf (to train it as the comparison does, add --set "
                    "stratified=true)")
    assert yaml.safe_load(out.out)["stratified"] is False  # the base settings, as the line says
    assert main([*argv, "--method", "standard"]) == 0
    assert "variants:" not in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nmodel: mlp\nvariants: {frozen: {method: nearest-etf, freeze_after: 3}}\n")
    assert main(["train", "--config", str(cfg), "--method", "nearest-etf", "--print-config"]) == 0
    assert "for variant 'frozen': --set freeze_after=3)" in capsys.readouterr().err


# -------------------------------------------------------------------------------- configs/paper

PAPER_FILES = sorted(PAPER_DIR.glob("*.yaml"))
OURS = {"mnist1d.yaml", "fashion-subset.yaml"}  # our data sets, in the paper's protocol
SETTINGS = {  # the paper's settings: file -> (dataset, model, K)
    "ufm-k10.yaml": ("ufm", "ufm", 10), "ufm-k100.yaml": ("ufm", "ufm", 100), "ufm-k200.yaml": ("ufm", "ufm", 200),
    "ufm-k1000.yaml": ("ufm", "ufm", 1000),
    "cifar10-resnet18.yaml": ("cifar10", "resnet18", 10), "cifar100-resnet18.yaml": ("cifar100", "resnet18", 100),
    "cifar10-vgg13.yaml": ("cifar10", "vgg13", 10), "cifar100-vgg13.yaml": ("cifar100", "vgg13", 100),
    "stl10-resnet18.yaml": ("stl10", "resnet18", 10), "imagenet-resnet50.yaml": ("imagenet", "resnet50", 1000),
}


def test_one_file_per_setting_of_the_paper_and_ours():
    assert {p.name for p in PAPER_FILES} == set(SETTINGS) | OURS


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: p.name)
def test_paper_config_resolves_to_the_papers_protocol(path, tmp_path, capsys):
    argv = ["compare", "--config", str(path), "--out", str(tmp_path / "out"), "--print-config"]
    if path.name.startswith("imagenet"):  # the layout of an ImageNet folder, without images
        for sub in [f"train/n{i:04d}" for i in range(1000)] + ["val"]:
            (tmp_path / "imagenet" / sub).mkdir(parents=True)
        argv += ["--data-dir", str(tmp_path / "imagenet")]
    if path.name == "fashion-subset.yaml" and find_fashion_mnist(None) is None:
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
    assert main(argv) == 0
    c = yaml.safe_load(capsys.readouterr().out)
    assert not (tmp_path / "out").exists()  # checked, nothing written
    assert c["methods"] == ["standard", "fixed-etf", "nearest-etf"] and c["seeds"] == [1, 2, 3, 4, 5]
    assert (c["optimizer"], c["agd_gain"], c["weight_decay"], c["schedule"], c["warmup_epochs"]) == (
        "agd", 10.0, 0.0, "constant", 0.0)
    assert (c["bias_free"], c["fixed_etf"], c["batch_size"], c["epochs"], c["temperature"], c["delta"]) == (
        True, "canonical", 256, 200, 5.0, 1e-3)
    assert (c["mean_schedule"], c["alpha_min"], c["label_smoothing"]) == ("paper", 1e-4, 0.0)
    assert c["report_epochs"] == [50, 200]
    # stratified batches for nearest-ETF only (our file-backed ImageNet loader has no stratified sampler)
    assert c["stratified"] is False
    want = {} if c["dataset"] == "imagenet" else {"nearest-etf": {"method": "nearest-etf", "stratified": True}}
    assert c.get("variants", {}) == want
    if path.name in SETTINGS:
        assert (c["dataset"], c["model"]) == SETTINGS[path.name][:2]
        if c["model"] == "resnet18":
            assert c["model_kwargs"] == {"stem": "imagenet"}  # the paper's ResNet stem, for every data set
        if c["dataset"] == "ufm":
            K = SETTINGS[path.name][2]
            assert (c["num_classes"], c["feature_dim"]) == (K, 512 if K < 1000 else 1024)


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: p.name)
def test_every_setting_says_whose_choice_it_is(path):
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "# paper" in line or "# ours" in line, f"{path.name}: {line!r}"


@pytest.mark.parametrize("path", [p for p in PAPER_FILES if p.name.startswith("ufm")], ids=lambda p: p.name)
def test_ufm_files_do_not_claim_the_code_for_what_it_lacks(path):
    """The released code has no UFM: its optimiser, batches and epochs there are our assumption, so marked ours."""
    marks = {line.partition(":")[0].strip(): line.partition("#")[2].strip() for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#") and "#" in line}
    for key in ("optimizer", "batch_size", "epochs", "variants"):
        assert marks[key].startswith("ours") and "released code has no UFM" in marks[key], (key, marks[key])
    assert marks["num_classes"].startswith("paper") and marks["dataset"].startswith("paper")
