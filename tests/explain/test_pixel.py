"""Integrated gradients and SmoothGrad against their formulas."""

import pytest
import torch

from attnscope.errors import ConfigError
from attnscope.explain.methods import create_cam
from tests.explain.test_cam import Tiny


def input_gradient(model, x, classes):
    x = x.clone().requires_grad_(True)
    score = model(x).gather(1, classes[:, None]).sum()
    return torch.autograd.grad(score, x)[0]


def test_integrated_gradients_equal_the_riemann_sum_written_out():
    model = Tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    classes = torch.tensor([2, 0])
    result = create_cam("integrated_gradients", model, steps=4, batch_size=3).compute(x, classes)
    grads = sum(input_gradient(model, (k + 0.5) / 4 * x, classes) for k in range(4)) / 4
    torch.testing.assert_close(result.raw["input"], (x * grads).sum(1), atol=1e-5, rtol=1e-4)


def test_integrated_gradients_add_up_to_the_change_of_score_from_the_baseline():
    model = Tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    classes = torch.tensor([1, 2])
    raw = create_cam("integrated_gradients", model, steps=256).compute(x, classes).raw["input"]
    with torch.no_grad():
        change = (model(x) - model(torch.zeros_like(x))).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(raw.sum((1, 2)), change, atol=2e-3, rtol=2e-3)  # completeness


def test_smoothgrad_averages_the_saliency_of_noisy_copies():
    model = Tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    classes = torch.tensor([0, 1])
    result = create_cam("smoothgrad", model, samples=5, noise=0.2, batch_size=4).compute(x, classes)
    noise = torch.randn((5, *x.shape), generator=torch.Generator().manual_seed(0))
    spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    maps = [input_gradient(model, x + noise[s] * 0.2 * spread[:, None, None, None], classes) for s in range(5)]
    expected = torch.stack([m.abs().sum(1) for m in maps]).mean(0)
    torch.testing.assert_close(result.raw["input"], expected, atol=1e-5, rtol=1e-4)
    plain = create_cam("smoothgrad", model, samples=1, noise=0.0).compute(x, classes).raw["input"]
    torch.testing.assert_close(plain, input_gradient(model, x, classes).abs().sum(1))  # no noise: saliency


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="steps=0 must be an integer >= 1"):
        create_cam("integrated_gradients", Tiny(), steps=0)
    with pytest.raises(ConfigError, match="samples=0 must be an integer >= 1"):
        create_cam("smoothgrad", Tiny(), samples=0)


class TinyNorm(torch.nn.Module):
    """conv (bias) -> batch norm -> relu -> conv (no bias) -> mean -> linear: both kinds of bias FullGrad reads."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 5, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(5)
        self.conv2 = torch.nn.Conv2d(5, 4, 3, stride=2, padding=1, bias=False)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.norm(self.conv1(x)))).mean((2, 3)))


def test_fullgrad_adds_the_input_and_every_bias_term_each_scaled_as_the_formula_says():
    from torch.nn import functional as F

    from attnscope.explain.cam import normalise

    model = TinyNorm()
    with torch.no_grad():  # running statistics and an affine transform that are not the identity
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    classes = torch.tensor([2, 1])
    ours = create_cam("fullgrad", model).compute(x, classes).raw["input"]
    xs = x.clone().requires_grad_(True)
    a1 = model.conv1(xs)
    a2 = model.norm(a1)
    score = model.head(model.conv2(torch.relu(a2)).mean((2, 3))).gather(1, classes[:, None]).sum()
    gx, g1, g2 = torch.autograd.grad(score, [xs, a1, a2])
    norm_bias = model.norm.bias - model.norm.running_mean * model.norm.weight / torch.sqrt(
        model.norm.running_var + 1e-5
    )
    expected = normalise((gx * x).abs().sum(1))
    for grad, bias in ((g1, model.conv1.bias), (g2, norm_bias)):
        part = (grad * bias.detach()[None, :, None, None]).abs().sum(1, keepdim=True)
        expected = expected + normalise(F.interpolate(part, size=(12, 12), mode="bilinear", align_corners=False)[:, 0])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


class TinyModules(torch.nn.Module):
    """conv -> ReLU module -> conv -> ReLU module (in place) -> mean -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.act2 = torch.nn.ReLU(inplace=True)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean((2, 3)))


def guided_by_hand(model, x, classes):
    """The backward pass written out: at each ReLU keep the gradient where the input was positive and the
    gradient is positive; the convolutions' own backward (linear) by autograd."""
    xs = x.clone().requires_grad_(True)
    a1 = model.conv1(xs)
    r1 = torch.relu(a1).detach().requires_grad_(True)
    a2 = model.conv2(r1)
    h, w = a2.shape[-2:]
    g = model.head.weight[classes][:, :, None, None].expand_as(a2) / (h * w)  # d score / d ReLU-2 output
    g = g.clamp_min(0) * (a2 > 0)
    (g,) = torch.autograd.grad(a2, r1, grad_outputs=g)
    g = g.clamp_min(0) * (a1 > 0)
    (g,) = torch.autograd.grad(a1, xs, grad_outputs=g)
    return g.abs().sum(1)


def test_guided_backprop_and_guided_gradcam_equal_the_backward_pass_written_out():
    from tests.explain.test_cam import all_hooks

    model = TinyModules().eval()
    x = torch.randn(2, 3, 12, 12)
    classes = torch.tensor([0, 2])
    guided = create_cam("guided_backprop", model).compute(x, classes).raw["input"]
    torch.testing.assert_close(guided, guided_by_hand(model, x, classes), atol=1e-6, rtol=1e-5)
    assert [type(m).__name__ for m in (model.act1, model.act2)] == ["ReLU", "ReLU"]  # put back
    product = create_cam("guided_gradcam", model, "conv2").compute(x, classes).raw["input"]
    gradcam = create_cam("gradcam", model, "conv2")(x, classes)
    torch.testing.assert_close(product, guided * gradcam, atol=1e-6, rtol=1e-5)
    assert all_hooks(model) == 0
    with pytest.raises(ConfigError, match="has no nn.ReLU module to guide"):
        create_cam("guided_backprop", Tiny())(x)
