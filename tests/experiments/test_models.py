"""Backbones: feature shapes, gradient flow, parameter counts against torchvision's published
figures, the UFM's index semantics, and the registry's errors."""

import copy

import pytest
import torch

from ncguide.experiments.models import MODELS, UFM, build_model
from ncguide.experiments.models.cnn import CNN1d, CNN2d
from tolerances import sum_tol


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_input(name: str, input_shape: tuple, batch: int, model: torch.nn.Module) -> torch.Tensor:
    if name == "ufm":
        return torch.randperm(model.num_samples)[:batch]
    return torch.randn(batch, *input_shape)


# (name, input_shape, kwargs, expected feature_dim)
CASES = [
    ("ufm", (), dict(num_samples=10, feature_dim=16), 16),
    ("mlp", (1, 8, 8), dict(widths=(32, 24)), 24),
    ("mlp", (20,), dict(widths=(16,), batch_norm=False, bias=False), 16),
    ("cnn1d", (40,), {}, 256),
    ("cnn1d", (1, 40), dict(channels=8, feature_dim=32), 32),
    ("cnn", (40,), {}, 256),
    ("cnn2d", (1, 28, 28), {}, 256),
    ("cnn2d", (3, 32, 32), dict(channels=(8, 16), feature_dim=20), 20),
    ("resnet18", (3, 32, 32), dict(width=0.25), 128),
    ("resnet18", (1, 28, 28), dict(width=0.125), 64),
    ("resnet18", (3, 64, 64), dict(stem="imagenet", width=0.25), 128),
    ("resnet34", (3, 32, 32), dict(width=0.125), 64),
    ("resnet50", (3, 64, 64), dict(stem="imagenet", width=0.25), 512),
    ("vgg13", (3, 32, 32), {}, 512),
]  # imagenet-style VGG-13 (129M parameters) and full-width ResNet-50 are checked on the meta device below


@pytest.mark.parametrize(
    "name,input_shape,kwargs,feature_dim",
    [
        ("resnet50", (3, 224, 224), {}, 2048),
        ("resnet34", (3, 32, 32), {}, 512),
        ("vgg13", (3, 224, 224), {}, 4096),
        ("vgg13", (3, 40, 40), dict(style="imagenet"), 4096),
    ],
)
def test_full_size_feature_shapes_on_meta_device(name, input_shape, kwargs, feature_dim):
    """Full-width models, shapes only (meta tensors carry no data): the layers chain up to (N, feature_dim)."""
    with torch.device("meta"):
        model = build_model(name, input_shape, num_classes=1000, **kwargs)
        assert model.feature_dim == feature_dim
        assert model(torch.empty(2, *input_shape)).shape == (2, feature_dim)


@pytest.mark.parametrize("name,input_shape,kwargs,feature_dim", CASES)
def test_features_shape_gradients_and_eval_batch_independence(name, input_shape, kwargs, feature_dim):
    model = build_model(name, input_shape, num_classes=10, **kwargs)
    assert model.feature_dim == feature_dim
    # training mode, batch of 4: every parameter tensor receives a finite, nonzero gradient
    x = make_input(name, input_shape, 4, model)
    h = model(x)
    assert h.shape == (4, feature_dim)
    (h * torch.randn_like(h)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"
    # a batch of 2 works (batch norm over two samples included)
    model.zero_grad()
    h2 = model(make_input(name, input_shape, 2, model))
    h2.sum().backward()
    assert h2.shape == (2, feature_dim) and torch.isfinite(h2).all()
    # eval mode: a sample's features do not depend on the rest of the batch
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5, rtol=1e-4)
    del model, h, h2


# Parameter counts. Source: torchvision model docs (pytorch.org/vision/stable/models), "num_params":
#   resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032; vgg13_bn 133,053,736 (1000 classes).
# Their final Linear is in_features·1000 + 1000, which our trunks leave to the head:
#   resnet18/34: 512·1000 + 1000 = 513,000   → 11,176,512 and 21,284,672
#   resnet50:    2048·1000 + 1000 = 2,049,000 → 23,508,032
#   vgg13_bn:    4096·1000 + 1000 = 4,097,000 → 128,956,736 (conv stages + the two 4096 FC layers)
# CIFAR stem (3×3 conv instead of 7×7, both 3→64, bias-free): 3·64·49 - 3·64·9 = 9,408 - 1,728 = 7,680 fewer,
#   11,176,512 - 7,680 = 11,168,832; plus a 10-class fc (512·10 + 10 = 5,130) gives the commonly cited 11,173,962.
TORCHVISION_TRUNK_PARAMS = [
    ("resnet18", dict(stem="imagenet"), 11_689_512 - 513_000),
    ("resnet18", dict(stem="cifar"), 11_173_962 - 5_130),
    ("resnet34", dict(stem="imagenet"), 21_797_672 - 513_000),
    ("resnet50", dict(stem="imagenet"), 25_557_032 - 2_049_000),
    ("vgg13", dict(style="imagenet"), 133_053_736 - 4_097_000),
]


@pytest.mark.parametrize("name,kwargs,expected", TORCHVISION_TRUNK_PARAMS)
def test_parameter_counts_match_torchvision(name, kwargs, expected):
    with torch.device("meta"):  # shapes only: no memory is allocated, nothing is initialised
        model = build_model(name, (3, 224, 224), num_classes=1000, **kwargs)
    assert n_params(model) == expected


def resnet18_params(base: int, in_channels: int, stem_kernel: int) -> int:
    """Closed-form parameter count of a basic-block ResNet-18 trunk with base width ``base``."""
    total = in_channels * base * stem_kernel**2 + 2 * base  # stem conv + BN
    c = base
    for i in range(4):
        p = base * 2**i
        for _ in range(2):
            total += c * p * 9 + 2 * p + p * p * 9 + 2 * p  # two conv3×3 + BN
            total += (c * p + 2 * p) if c != p else 0  # 1×1 projection shortcut + BN
            c = p
    return total


def test_resnet18_closed_form_count_reproduces_torchvision():
    assert resnet18_params(64, 3, 7) == 11_689_512 - 513_000


@pytest.mark.parametrize("width,in_channels,stem", [(0.25, 3, "cifar"), (0.5, 1, "imagenet"), (0.125, 3, "imagenet")])
def test_resnet_width_multiplier_and_in_channels(width, in_channels, stem):
    model = build_model("resnet18", (in_channels, 32, 32), 10, width=width, stem=stem)
    base = round(64 * width)
    assert model.feature_dim == 8 * base
    assert n_params(model) == resnet18_params(base, in_channels, 7 if stem == "imagenet" else 3)


@pytest.mark.parametrize(
    "size,stem", [(28, "cifar"), (32, "cifar"), (64, "cifar"), (96, "imagenet"), (224, "imagenet")]
)
def test_resnet_stem_defaults_by_input_size(size, stem):
    with torch.device("meta"):
        model = build_model("resnet50", (3, size, size), 10)
    conv = model.stem[0]
    assert model.stem_name == stem
    assert conv.kernel_size == ((3, 3) if stem == "cifar" else (7, 7))
    assert conv.stride == ((1, 1) if stem == "cifar" else (2, 2))
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in model.stem) == (stem == "imagenet")


def test_resnet_stem_resolution():
    """CIFAR stem keeps 32×32 (layer4 is 4×4); the ImageNet stem divides by 4 first (layer4 is 1×1)."""
    x = torch.randn(2, 3, 32, 32)
    for stem, side in (("cifar", 4), ("imagenet", 1)):
        model = build_model("resnet18", (3, 32, 32), 10, width=0.125, stem=stem)
        assert model.stages(model.stem(x)).shape[-2:] == (side, side)


def test_vgg_style_defaults_and_small_input_error():
    with torch.device("meta"):
        assert build_model("vgg13", (3, 32, 32), 10).feature_dim == 512
        assert build_model("vgg13", (3, 224, 224), 1000).feature_dim == 4096
    with pytest.raises(ValueError, match="32"):
        build_model("vgg13", (1, 28, 28), 10)


# --- UFM ---------------------------------------------------------------------------------------


def test_ufm_features_are_parameter_rows_and_only_those_rows_get_gradients():
    model = build_model("ufm", (), 5, num_samples=50, feature_dim=8)
    assert isinstance(model, UFM) and model.features.shape == (50, 8)
    idx = torch.tensor([3, 17, 3, 49, 0])
    h = model(idx)
    for row, i in enumerate(idx.tolist()):
        assert torch.equal(h[row], model.features[i])
    h.sum().backward()
    touched = torch.zeros(50, dtype=torch.bool)
    touched[idx] = True
    assert (model.features.grad[~touched] == 0).all()
    assert torch.equal(model.features.grad[3], torch.full((8,), 2.0))  # index 3 appears twice
    assert torch.equal(model.features.grad[17], torch.ones(8))


def test_ufm_init_is_small_gaussian():
    model = build_model("ufm", (), 10, num_samples=2000, feature_dim=64, init_std=0.05)
    f = model.features.detach().double()
    assert abs(f.mean().item()) < 0.005 and abs(f.std().item() / 0.05 - 1) < 0.02


@pytest.mark.parametrize("idx", [torch.tensor([0, 10]), torch.tensor([-1, 2]), torch.tensor([0.0, 1.0])])
def test_ufm_rejects_bad_indices(idx):
    model = build_model("ufm", (), 5, num_samples=10, feature_dim=8)
    with pytest.raises(ValueError):
        model(idx)


def test_ufm_needs_num_samples():
    with pytest.raises(ValueError, match="num_samples"):
        build_model("ufm", (), 10)


# --- MLP and CNNs ------------------------------------------------------------------------------


def test_bias_free_mlp_is_positively_homogeneous():
    """No biases and no batch norm: ``f(c·x) = c·f(x)`` for ``c > 0`` (ReLU is positively homogeneous)."""
    model = build_model("mlp", (3, 5), 10, widths=(32, 32, 16), batch_norm=False, bias=False).double()
    assert not any("bias" in name for name, _ in model.named_parameters())
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    # rounding bound of both sides: sums of 15 + 32 + 32 + 16 products per path, of magnitude at most what the
    # same network with |W| computes from 3.7|x| (no cancellation in it)
    magnitude = copy.deepcopy(model)
    with torch.no_grad():
        for w in magnitude.parameters():
            w.abs_()
    scale = float(magnitude(3.7 * x.abs()).abs().max())
    assert torch.allclose(model(3.7 * x), 3.7 * model(x), rtol=0, atol=2 * sum_tol(15 + 32 + 32 + 16, scale))
    biased = build_model("mlp", (3, 5), 10, widths=(32, 32, 16), batch_norm=False).double()
    assert not torch.allclose(biased(3.7 * x), 3.7 * biased(x), atol=1e-6)


def test_cnn1d_accepts_flat_and_channel_inputs():
    model = build_model("cnn1d", (40,), 10).eval()
    x = torch.randn(5, 40)
    assert torch.equal(model(x), model(x.unsqueeze(1)))


@pytest.mark.parametrize("shape,cls", [((40,), CNN1d), ((1, 40), CNN1d), ((1, 28, 28), CNN2d), ((3, 32, 32), CNN2d)])
def test_cnn_dispatches_on_input_rank(shape, cls):
    assert isinstance(build_model("cnn", shape, 10), cls)


# --- registry ----------------------------------------------------------------------------------


def test_build_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18") as err:
        build_model("resnet19", (3, 32, 32), 10)
    assert all(name in str(err.value) for name in MODELS)


def test_build_model_unknown_option():
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", (3, 32, 32), 10, widht=0.5)
