"""aug_smooth: the views, their targets and their average."""

import torch

from attnscope.explain.cam import normalise
from attnscope.explain.methods import MAP_METHODS, PIXEL_METHODS, create_cam
from attnscope.names import TRANSFORMER_METHODS
from tests.explain.test_cam import Tiny, all_hooks

CNN_METHODS = [name for name in MAP_METHODS if name not in TRANSFORMER_METHODS]  # test_transformer.py: the rest


def test_aug_smooth_averages_the_flipped_and_brightened_views_of_the_same_class():
    model = Tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    plain = create_cam("gradcam", model, "conv2")
    classes = plain.compute(x).targets
    views = []
    for flip in (False, True):
        for factor in (1.0, 0.9, 1.1):
            view = (x.flip(-1) if flip else x) * factor
            maps = plain(view, classes)
            views.append(maps.flip(-1) if flip else maps)
    smoothed = create_cam("gradcam", model, "conv2", aug_smooth=True).compute(x)
    torch.testing.assert_close(smoothed.maps, normalise(torch.stack(views).mean(0)), atol=1e-6, rtol=0)
    assert torch.equal(smoothed.targets, classes) and smoothed.raw["conv2"].shape == (2, 8, 8)


def test_every_method_with_aug_smooth_leaves_no_hooks_and_gives_maps_in_range():
    from tests.explain.test_pixel import TinyModules

    model = TinyModules().eval()  # nn.ReLU modules, for the guided methods
    x = torch.randn(1, 3, 16, 16)
    quick = {"integrated_gradients": {"steps": 2}, "smoothgrad": {"samples": 2}}
    for name in CNN_METHODS:
        layers = None if name in PIXEL_METHODS else "conv2"
        maps = create_cam(name, model, layers, aug_smooth=True, **quick.get(name, {}))(x)
        assert maps.shape == (1, 16, 16) and 0 <= float(maps.min()) and float(maps.max()) <= 1, name
    assert all_hooks(model) == 0
