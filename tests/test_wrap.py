"""replace_classifier (wrap.py): a head in place of a model's final Linear layer."""

import copy
import io
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
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


class Unusual(nn.Module):  # the classifier under a name find_classifier does not know
    def __init__(self):
        super().__init__()
        self.body, self.out = nn.Sequential(nn.Linear(7, 11), nn.ReLU()), nn.Linear(11, 3)

    def forward(self, x):
        return self.out(self.body(x))


def test_layer_names_the_linear_explicitly():
    model = Unusual()
    with pytest.raises(ValueError, match=r"no final Linear layer found in Unusual.*children: body, out.*layer="):
        replace_classifier(model, "standard")
    wrapped = replace_classifier(model, "standard", layer="out")
    assert wrapped.replaced == "out" and wrapped.head.feature_dim == 11
    assert wrapped.eval()(torch.randn(4, 7)).shape == (4, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer="fcc"), "has no layer 'fcc'"),
    (dict(layer="features.1"), "is a ReLU, not a Linear layer"),
    (dict(head=NearestETFHead(13, 5)), "the head takes 13 features but fc of Sequential reads 12"),
    (dict(head=NearestETFHead(12, 5), temperature=3.0), "head options"),
    (dict(head=NearestETFHead(12, 7)), r"the head has 7 classes but fc of Sequential has 5 outputs.*num_classes=5"),
    (dict(head=nn.Linear(12, 5)), r"head Linear is not a head: a head's forward takes \(features, targets\)"),
    (dict(layer=""), "layer='' names no layer"),
    (dict(layer="."), "layer='.' names no layer"),
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


@pytest.mark.parametrize("tail", [(nn.Flatten(), nn.Linear(7, 4)), (nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 4)),
                                  (nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 4), nn.Dropout())])
def test_a_model_that_is_a_sequential_ending_in_a_linear(tail):
    torch.manual_seed(0)
    model = nn.Sequential(*tail)
    name = str(len(tail) - (2 if isinstance(tail[-1], nn.Dropout) else 1))
    found, linear = find_classifier(model)
    assert found == name and linear is tail[int(name)]
    wrapped = replace_classifier(model, "nearest-etf")
    x, y = torch.randn(8, 7), torch.arange(8) % 4
    assert wrapped(x, y).shape == (8, 4)  # training mode too: the dropout now acts on the features
    assert wrapped.eval()(x).shape == (8, 4)
    assert torch.equal(wrapped.features(x), nn.Sequential(*tail[:int(name)])(x))


class Scaled(nn.Module):  # post-processes the classifier's output: each is refused at its first forward
    def __init__(self, how):
        super().__init__()
        self.body, self.fc, self.how = nn.Linear(7, 12), nn.Linear(12, 5), how

    def forward(self, x):
        h = self.body(x)
        if self.how == "scale":
            return self.fc(h) * 2.0
        if self.how == "log_softmax":
            return F.log_softmax(self.fc(h), dim=1)
        if self.how == "dict":
            return {"logits": self.fc(h)}
        if self.how == "weight":  # reads the layer's parameters itself
            return F.linear(h, self.fc.weight, self.fc.bias)
        return self.fc(h)


class ScaledSequential(VGGLike):  # a Sequential classifier, scaled after it
    def forward(self, x):
        return 3.0 * self.classifier(self.features(x))


@pytest.mark.parametrize("how,match", [
    ("scale", "does not return what fc computes"),
    ("log_softmax", "does not return what fc computes"),
    ("dict", "does not return what fc computes"),
    ("weight", "the model reads fc.weight, but replace_classifier replaced"),
])
def test_a_model_that_post_processes_its_classifier_is_refused_and_given_back(how, match):
    torch.manual_seed(0)
    model = Scaled(how)
    linear = model.fc
    x, y = torch.randn(10, 7), torch.arange(10) % 5
    with torch.no_grad():
        before = model(x)
    wrapped = replace_classifier(model, "nearest-etf")
    with pytest.raises(ValueError, match=f"{match}.*fc is back in the model.*HeadedModel\\(backbone, head\\) by hand"):
        wrapped(x, y)
    assert model.fc is linear  # nothing lost: the model computes what it did
    with torch.no_grad():
        after = model(x)
    assert (after.keys() == before.keys()) if how == "dict" else torch.equal(after, before)
    assert not any(m._forward_hooks for m in model.modules())  # no hook of ours left behind on the model


def test_a_scaled_sequential_classifier_is_refused_and_given_back():
    model = ScaledSequential(tail=(nn.Dropout(),)).eval()
    linear = model.classifier[3]
    wrapped = replace_classifier(model, "standard")
    with pytest.raises(ValueError, match="does not return what classifier.3 computes"):
        wrapped(torch.randn(3, 7))
    assert model.classifier[3] is linear and not any(m._forward_hooks for m in model.modules())


def test_a_model_returning_its_classifier_output_passes_the_check_in_both_modes():
    torch.manual_seed(0)
    wrapped = replace_classifier(Scaled("plain"), "nearest-etf")
    x, y = torch.randn(10, 7), torch.arange(10) % 5
    assert wrapped(x, y).shape == (10, 5)
    stale = wrapped.backbone(x)  # the backbone called on its own: its output does not fool the next check
    assert stale.shape == (10, 12)
    assert wrapped.eval()(x).shape == (10, 5)
    train_mode = VGGLike(tail=(nn.Dropout(),)).train()  # dropout after the Linear changes the tensor in training
    assert replace_classifier(train_mode, "standard")(torch.randn(4, 7), torch.arange(4) % 3).shape == (4, 3)


def test_copies_and_pickles_keep_the_check_and_work():
    torch.manual_seed(0)
    wrapped = replace_classifier(Scaled("plain"), "nearest-etf").eval()
    x = torch.randn(6, 7)
    twin = copy.deepcopy(wrapped)
    buffer = io.BytesIO()
    torch.save(wrapped, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        reference = wrapped(x)
        assert torch.equal(twin(x), reference) and torch.equal(loaded(x), reference)
    twin.backbone.how = "scale"  # the copy checks its own backbone
    with pytest.raises(ValueError, match="does not return what fc computes"):
        twin(x)
    assert torch.equal(wrapped(x), reference)  # the original is not affected


def test_an_uninitialised_lazy_linear_says_so_and_works_after_a_forward():
    model = nn.Sequential(OrderedDict(body=nn.Linear(7, 12), fc=nn.LazyLinear(5)))
    with pytest.raises(ValueError, match="fc of Sequential is an uninitialised nn.LazyLinear.*one forward pass"):
        replace_classifier(model, "nearest-etf")
    assert isinstance(model.fc, nn.LazyLinear)  # left as it was
    model(torch.randn(2, 7))
    wrapped = replace_classifier(model, "nearest-etf")
    assert (wrapped.head.feature_dim, wrapped.head.num_classes) == (12, 5)


def test_a_model_that_is_a_linear_has_no_features():
    with pytest.raises(ValueError, match="the model is itself a Linear layer"):
        replace_classifier(nn.Linear(4, 3), "standard")


def test_a_model_that_fails_on_the_features_is_refused_and_given_back():
    """A forward that reshapes fc's output to (N, K) fails on the (N, d) features: a ValueError naming the
    post-processing, and the model works again as before (review finding)."""

    class Viewed(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Linear(8, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.body(x)).view(x.shape[0], 3)

    torch.manual_seed(0)
    model, x = Viewed(), torch.randn(4, 8)
    before = model(x).detach()
    wrapped = replace_classifier(model, "standard")
    with pytest.raises(ValueError, match="post-processes fc's output"):
        wrapped(x, torch.randint(0, 3, (4,)))
    assert isinstance(model.fc, nn.Linear) and torch.equal(model(x), before)


def test_a_model_that_fails_before_the_classifier_keeps_its_own_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Linear(8, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.body(x.view(-1, 5)))

    wrapped = replace_classifier(Broken(), "standard")
    with pytest.raises(RuntimeError):
        wrapped(torch.randn(4, 8))


@pytest.mark.parametrize("tail", [[], [nn.Dropout(0.1)]])
def test_replacing_twice_is_refused(tail):
    """A second call would find the hidden Linear before the stand-in and put a head of the wrong size there."""
    model = nn.Sequential(nn.Linear(8, 6), *tail, nn.Linear(6, 3))
    first = replace_classifier(model, "standard")
    with pytest.raises(ValueError, match="already has a layer replaced"):
        replace_classifier(model, "nearest-etf")
    assert first(torch.randn(4, 8), torch.randint(0, 3, (4,))).shape == (4, 3)
