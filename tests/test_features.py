"""Feature hooks (``features.py``): features of a named layer of a model you did not write, in eval mode,
batched or from a loader, and fed to the streaming metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ncguide.features import capture, extract_features, iter_features
from ncguide.metrics import nc_metrics, nc_metrics_streaming
from tolerances import sum_tol

F64 = torch.float64


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)
    ).double()


def abs_forward(net, x):
    """The network with |weights|, |biases| on |x|: a bound on the sums every entry of the features is made of."""
    with torch.no_grad():
        for layer in net[:5]:
            x = x.abs() @ layer.weight.abs().T + layer.bias.abs() if isinstance(layer, nn.Linear) else x
    return x


@pytest.mark.parametrize("layer,which", [("4", "output"), ("5", "input")])
def test_hook_extraction_equals_manual_penultimate(layer, which):
    net = small_net().train()
    x = torch.randn(50, 6, dtype=F64)
    with torch.no_grad():
        manual = net.eval()[:5](x)  # eval mode: dropout off
    net.train()
    got = extract_features(net, layer, x, which=which, batch_size=16)
    tol = 2 * sum_tol(6 + 16, scale=float(abs_forward(net, x).max()))  # batched GEMMs round differently
    torch.testing.assert_close(got, manual, rtol=0, atol=tol)
    assert net.training and all(m.training for m in net.modules())  # modes restored
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed
    y = torch.arange(50) % 3
    loader = [(x[i : i + 20], y[i : i + 20]) for i in range(0, 50, 20)]
    got2, labels = extract_features(net, layer, loader, which=which, return_labels=True)
    torch.testing.assert_close(got2, manual, rtol=0, atol=tol)
    assert torch.equal(labels, y)


def test_hook_features_feed_the_metrics():
    net = small_net()
    x = torch.randn(60, 6, dtype=F64)
    y = torch.arange(60) % 3
    loader = [(x[i : i + 25], y[i : i + 25]) for i in range(0, 60, 25)]
    W, b = net[5].weight, net[5].bias
    h = extract_features(net, "5", x, which="input")
    stream = nc_metrics_streaming(lambda: iter_features(net, "5", loader, which="input"), W, b)
    assert stream == pytest.approx(nc_metrics(h, y, W, b), rel=1e-10, nan_ok=True)
    # the classifier's accuracy computed from hooked features equals the model's own
    assert stream["accuracy"] == pytest.approx(float((net.eval()(x).argmax(1) == y).double().mean()))


def test_capture_context_manager_and_errors():
    net = small_net().eval()
    x = torch.randn(5, 6, dtype=F64, requires_grad=True)
    with capture(net, "3", detach=False) as store:
        net(x)
        net(x)
    assert len(store) == 2 and store[0].requires_grad and store[0].shape == (5, 8)
    assert not net[3]._forward_hooks
    with pytest.raises(ValueError, match=r"no layer named 'fc'.*Valid names \(6\): '0', '1'"):
        with capture(net, "fc"):
            pass
    with pytest.raises(ValueError, match="which"):
        extract_features(net, "3", x, which="both")
    with pytest.raises(ValueError, match="Did you mean '3'"):
        iter_features(net, "3 ", x)  # raised at the call, before any batch
    lin = nn.Linear(4, 4)
    twice = nn.Sequential()
    twice.add_module("a", lin)
    twice.add_module("b", lin)  # the same module runs twice per forward
    with pytest.raises(ValueError, match="2 times"):
        extract_features(twice, "a", torch.randn(3, 4))
    with pytest.raises(ValueError, match="carry no labels"):
        extract_features(net, "3", x.detach(), return_labels=True)
