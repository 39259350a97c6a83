import gc

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.explain.cam import GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM
from attnscope.explain.methods import CAM_METHODS, MAP_METHODS, create_cam
from attnscope.models import create_model
from attnscope.names import TRANSFORMER_METHODS

QUICK = {"integrated_gradients": {"steps": 2}, "smoothgrad": {"samples": 2}}
GRADIENT_CAMS = [name for name in CAM_METHODS if name not in ("scorecam", "ablationcam", "guided_gradcam")]

CNN_METHODS = [name for name in MAP_METHODS if name not in TRANSFORMER_METHODS]  # test_transformer.py: the rest


class Tiny(nn.Module):
    """conv -> relu -> conv (the CAM layer) -> relu (in place) -> mean -> linear."""

    def __init__(self, in_chans=3, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        a = self.conv2(F.relu(self.conv1(x)))
        return self.head(F.relu(a, inplace=True).mean((2, 3)))


def principal_projection(weighted):
    """Per image: positions as points of K values, centred, projected on the first right singular vector,
    oriented so that the projection agrees with the channel sum (numpy, one image at a time)."""
    out = []
    for w in weighted.detach().numpy():
        points = w.reshape(w.shape[0], -1).T
        centred = points - points.mean(0)
        vt = np.linalg.svd(centred, full_matrices=False)[2]
        projection = centred @ vt[0]
        if (projection * points.sum(1)).sum() < 0:
            projection = -projection
        out.append(projection.reshape(w.shape[1:]))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def by_hand(model, x, classes, method):
    """Activations and gradients computed without hooks; the method's formula written out."""
    a = model.conv2(F.relu(model.conv1(x)))
    logits = model.head(F.relu(a).mean((2, 3)))
    if logits.shape[1] == 1:
        score = logits[:, 0] * (classes.float() * 2 - 1)
    else:
        score = logits.gather(1, classes[:, None])[:, 0]
    (g,) = torch.autograd.grad(score.sum(), a)
    a = a.detach()
    if method == "gradcam":
        cam = (g.mean((2, 3), keepdim=True) * a).sum(1)
    elif method == "xgradcam":
        cam = ((g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7) * a).sum(1)
    elif method == "layercam":
        cam = (g.clamp_min(0) * a).sum(1)
    elif method == "hirescam":
        cam = (g * a).sum(1)
    elif method == "gradcam_elementwise":
        cam = (g * a).clamp_min(0).sum(1)
    elif method == "eigencam":
        cam = principal_projection(a)
    elif method == "eigengradcam":
        cam = principal_projection(g * a)
    else:
        denominator = 2 * g**2 + a.sum((2, 3), keepdim=True) * g**3
        alpha = torch.where(denominator != 0, g**2 / torch.where(denominator != 0, denominator, 1), 0)
        cam = ((alpha * g.clamp_min(0)).sum((2, 3), keepdim=True) * a).sum(1)
    cam = F.interpolate(cam.clamp_min(0)[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).min(1).values[:, None, None]
    high = cam.flatten(1).max(1).values[:, None, None]
    return (cam - low) / (high - low).clamp_min(1e-12)


@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_cams_equal_the_formula_computed_by_hand(method):
    model = Tiny().eval()
    x = torch.randn(4, 3, 16, 16)
    classes = torch.tensor([0, 1, 2, 1])
    ours = create_cam(method, model, ["conv2"])(x, classes)
    expected = by_hand(model, x.clone().requires_grad_(True), classes, method)
    assert ours.shape == (4, 16, 16)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert ours.min() >= 0 and ours.max() <= 1


def test_default_target_is_the_predicted_class():
    model = Tiny().eval()
    x = torch.randn(3, 3, 16, 16)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(GradCAM(model, "conv2")(x), GradCAM(model, "conv2")(x, predicted))


def test_single_logit_binary_scores_the_negative_class_with_minus_the_logit():
    model = Tiny(classes=1).eval()
    x = torch.randn(2, 3, 16, 16)
    cam = GradCAM(model, [model.conv2])  # a module works as well as a name
    positive = cam.compute(x, [1, 1]).raw["conv2"]
    negative = cam.compute(x, [0, 0]).raw["conv2"]
    # Grad-CAM is linear in the score: the two classes split the signed map between them
    assert torch.all(positive * negative == 0)
    assert (positive > 0).any() and (negative > 0).any()
    expected = by_hand(model, x.clone().requires_grad_(True), torch.tensor([0, 0]), "gradcam")
    torch.testing.assert_close(cam(x, [0, 0]), expected, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="classes 0 and 1"):
        cam(x, [2, 0])


def test_a_batch_gives_each_image_its_own_map():
    model = create_model("vgg_tiny", num_classes=4).eval()
    x = torch.randn(3, 3, 64, 64)
    together = GradCAMPlusPlus(model)(x, [0, 1, 2])
    alone = torch.cat([GradCAMPlusPlus(model)(x[i : i + 1], [i]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_grayscale_models_and_several_layers_averaged():
    model = create_model("resnet_tiny", num_classes=2, in_chans=1).eval()
    x = torch.randn(2, 1, 48, 48)
    result = LayerCAM(model, ["layer3", "layer4"]).compute(x)
    assert set(result.raw) == {"layer3", "layer4"} and result.maps.shape == (2, 48, 48)
    single = [LayerCAM(model, [name])(x) for name in ("layer3", "layer4")]
    average = (single[0] + single[1]) / 2
    low = average.flatten(1).min(1).values[:, None, None]
    high = average.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(result.maps, (average - low) / (high - low), atol=1e-5, rtol=0)


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_also_when_forward_or_targets_fail():
    model = Tiny().train()
    x = torch.randn(2, 3, 16, 16)
    XGradCAM(model, "conv2")(x)
    assert all_hooks(model) == 0 and model.training  # the model's mode is restored too

    def broken_head(_module, _inputs, _output):
        raise RuntimeError("head failed")

    handle = model.head.register_forward_hook(broken_head)
    with pytest.raises(RuntimeError, match="head failed"):
        GradCAM(model, "conv2")(x)
    handle.remove()
    assert all_hooks(model) == 0
    with pytest.raises(ConfigError, match=r"target classes must lie in \[0, 3\)"):
        GradCAM(model, "conv2")(x, [5, 0])
    assert all_hooks(model) == 0


@pytest.mark.slow
def test_cams_made_in_a_loop_hold_no_memory():
    model = create_model("vgg_tiny", num_classes=2).eval()
    x = torch.randn(2, 3, 64, 64)

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) in (torch.Tensor, nn.Parameter))

    GradCAM(model)(x)
    before = live_tensors()
    for round_ in range(20):
        for name in CNN_METHODS if round_ < 2 else GRADIENT_CAMS:  # the slow ones twice
            create_cam(name, model, batch_size=256, **QUICK.get(name, {}))(x)
    assert live_tensors() == before
    assert all_hooks(model) == 0


def test_bad_layers_and_inputs_are_refused_by_name():
    model = Tiny()
    with pytest.raises(ConfigError, match="no layer 'conv9'"):
        GradCAM(model, "conv9")
    with pytest.raises(ConfigError, match="names no default CAM layer"):
        GradCAM(model)
    with pytest.raises(ConfigError, match="not a module of this model"):
        GradCAM(model, [nn.Conv2d(1, 1, 1)])
    with pytest.raises(ConfigError, match="unknown map method 'scorecam9'"):
        create_cam("scorecam9", model, "conv2")
    with pytest.raises(
        ConfigError, match=r"map method 'smoothgrad' has no option\(s\) \['eigen_smooth'\].*no eigen_smooth"
    ):
        create_cam("smoothgrad", model, eigen_smooth=True)
    with pytest.raises(ConfigError, match="occlusion maps the input's pixels; it takes no target layers"):
        create_cam("occlusion", model, "conv2")
    with pytest.raises(ConfigError, match=r"map method 'gradcam' has no option\(s\) \['samples'\]"):
        create_cam("gradcam", model, "conv2", samples=3)
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        GradCAM(model, "conv2")(torch.randn(3, 16, 16))
    with pytest.raises(ConfigError, match="must output a"):
        GradCAM(model, "head")(torch.randn(1, 3, 16, 16))


def test_frozen_parameters_still_get_maps():
    model = Tiny().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    maps = GradCAM(model, "conv2")(torch.randn(1, 3, 16, 16))
    assert maps.max() == pytest.approx(1.0)


def test_eigen_smooth_projects_the_weighted_activations_of_any_cam():
    model = Tiny().eval()
    x = torch.randn(3, 3, 16, 16)
    classes = torch.tensor([2, 0, 1])
    ours = create_cam("gradcam", model, "conv2", eigen_smooth=True).compute(x, classes).raw["conv2"]
    a = model.conv2(F.relu(model.conv1(x.clone().requires_grad_(True))))
    score = model.head(F.relu(a).mean((2, 3))).gather(1, classes[:, None]).sum()
    (g,) = torch.autograd.grad(score, a)
    expected = principal_projection(g.mean((2, 3), keepdim=True) * a.detach()).clamp_min(0)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_eigencam_explains_no_class_and_needs_no_gradient():
    model = Tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    cam = create_cam("eigencam", model, "conv2")
    torch.testing.assert_close(cam(x, [0, 0]), cam(x, [2, 1]))
