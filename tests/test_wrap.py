"""replace_classifier (wrap.py): a head in place of a model's final Linear layer."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from ncguide import HeadedModel, NearestETFHead, StandardHead, find_classifier, replace_classifier


def plain(d=12, k=5):
    """A hand-written classifier: features, then ``fc``."""
    return nn.Sequential(OrderedDict(features=nn.Sequential(nn.Linear(7, d), nn.ReLU()), fc=nn.Linear(d, k)))


class VGGLike(nn.Module):  # torchvision's VGG/MobileNet: a Sequential `classifier` ending in a Linear
    def __init__(self, tail=()):
        super().__init__()
        self.features = nn.Linear(7, 16)
        self.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3), *tail)

    def forward(self, x):
        return self.classifier(self.features(x))


class ViTLike(nn.Module):  # torchvision's ViT: heads = Sequential(head=Linear)
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(7, 10)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(10, 4)))

    def forward(self, x):
        return self.heads(self.encoder(x))


class TimmLike(nn.Module):  # timm: get_classifier() returns a Linear nested in a head module
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(7, 9)
        self.head = nn.Module()
        self.head.norm, self.head.fc = nn.LayerNorm(9), nn.Linear(9, 6)

    def get_classifier(self):
        return self.head.fc

    def forward(self, x):
        return self.head.fc(self.head.norm(self.stem(x)))


@pytest.mark.parametrize("build,name,d,k", [
    (plain, "fc", 12, 5),
    (VGGLike, "classifier.3", 8, 3),
    (lambda: VGGLike(tail=(nn.Dropout(),)), "classifier.3", 8, 3),
    (ViTLike, "heads.head", 10, 4),
    (TimmLike, "head.fc", 9, 6),
])
def test_the_final_linear_is_found_and_the_features_are_its_input(build, name, d, k):
    torch.manual_seed(0)
    model = build().eval()
    found, linear = find_classifier(model)
    assert found == name and (linear.in_features, linear.out_features) == (d, k)
    x = torch.randn(6, 7)
    seen = []
    linear.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        model(x)
    wrapped = replace_classifier(model, "nearest-etf")
    assert isinstance(wrapped, HeadedModel) and wrapped.replaced == name
    assert isinstance(wrapped.head, NearestETFHead) and (wrapped.head.feature_dim, wrapped.head.num_classes) == (d, k)
    assert isinstance(model.get_submodule(name), nn.Identity)  # in place
    with torch.no_grad():
        assert torch.equal(wrapped.features(x), seen[0])  # exactly what the Linear read


def test_forward_passes_the_targets_to_the_head():
    torch.manual_seed(0)
    model = plain()
    head = NearestETFHead(12, 5)
    wrapped = replace_classifier(model, head)
    assert wrapped.head is head
    x, y = torch.randn(20, 7), torch.arange(20) % 5
    twin = NearestETFHead(12, 5)
    twin.load_state_dict(head.state_dict())
    logits = wrapped(x, y)  # training: the class means take this batch
    assert torch.equal(logits, twin(model(x), y))
    after, twin_after = head.state_dict(), twin.state_dict()
    assert all(torch.equal(v, twin_after[k]) for k, v in after.items())  # the same class-mean update
    with pytest.raises(ValueError, match="targets"):
        wrapped(x)  # the nearest-ETF head needs them in training mode
    wrapped.eval()
    assert wrapped(x).shape == (20, 5)


def test_state_dict_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    wrapped = replace_classifier(plain(), "nearest-etf")
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    x, y = torch.randn(40, 7), torch.arange(40) % 5
    for _ in range(3):
        loss = nn.functional.cross_entropy(wrapped(x, y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        wrapped.after_step()
    torch.save(wrapped.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(1)  # another initialisation: everything must come from the file
    again = replace_classifier(plain(), "nearest-etf")
    again.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    wrapped.eval()
    again.eval()
    with torch.no_grad():
        assert torch.equal(wrapped(x), again(x))


def test_after_step_is_the_heads():
    wrapped = replace_classifier(plain(), "standard")
    assert isinstance(wrapped.head, StandardHead)
    with torch.no_grad():
        wrapped.head.linear.weight.mul_(3)
    wrapped.after_step()  # StandardHead renormalises its rows
    assert torch.allclose(wrapped.head.linear.weight.norm(dim=1), torch.ones(5))


def test_layer_names_the_linear_explicitly():
    model = nn.Sequential(nn.Linear(7, 11), nn.ReLU(), nn.Linear(11, 3))
    with pytest.raises(ValueError, match=r"no final Linear layer found in Sequential.*children: 0, 1, 2.*layer="):
        replace_classifier(model, "standard")
    wrapped = replace_classifier(model, "standard", layer="2")
    assert wrapped.replaced == "2" and wrapped.head.feature_dim == 11


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer="fcc"), "has no layer 'fcc'"),
    (dict(layer="features.1"), "is a ReLU, not a Linear layer"),
    (dict(head=NearestETFHead(13, 5)), "the head takes 13 features but fc of Sequential reads 12"),
    (dict(head=NearestETFHead(12, 5), temperature=3.0), "head options"),
])
def test_wrong_or_missing_layer_is_a_value_error(kwargs, match):
    model = plain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        replace_classifier(model, kwargs.pop("head", "nearest-etf"), **kwargs)
    assert isinstance(model.fc, nn.Linear) and model.state_dict().keys() == before.keys()  # left as it was


def test_layers_after_the_final_linear_are_refused():
    with pytest.raises(ValueError, match="no final Linear layer"):
        find_classifier(VGGLike(tail=(nn.Softmax(dim=1),)))  # replacing the Linear would leave a softmax
