"""Score-CAM, Ablation-CAM and occlusion against their formulas, one extra forward pass at a time."""

import pytest
import torch
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.explain.methods import create_cam
from tests.explain.test_cam import Tiny, all_hooks


def head(model, a):
    """The rest of Tiny after its CAM layer."""
    return model.head(F.relu(a).mean((2, 3)))


def scaled(cam, size):
    cam = F.interpolate(cam.clamp_min(0)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low, high = cam.flatten(1).min(1).values[:, None, None], cam.flatten(1).max(1).values[:, None, None]
    return (cam - low) / (high - low).clamp_min(1e-12)


@torch.no_grad()
def score_cam_by_hand(model, x, classes):
    a = model.conv2(F.relu(model.conv1(x)))
    cams = []
    for b in range(len(x)):
        total = torch.zeros(a.shape[-2:])
        for k in range(a.shape[1]):
            up = F.interpolate(a[b : b + 1, k : k + 1], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            logits = model(x[b : b + 1] * mask)
            if logits.shape[1] == 1:  # a single logit: p for class 1, 1 - p for class 0
                positive = torch.sigmoid(logits[0, 0])
                probability = positive if classes[b] == 1 else 1 - positive
            else:
                probability = torch.softmax(logits, 1)[0, classes[b]]
            total += probability * a[b, k]
        cams.append(total)
    return scaled(torch.stack(cams), x.shape[-2:])


@torch.no_grad()
def ablation_cam_by_hand(model, x, classes):
    a = model.conv2(F.relu(model.conv1(x)))
    y = head(model, a).gather(1, classes[:, None])[:, 0]
    weights = torch.empty(a.shape[:2])
    for k in range(a.shape[1]):
        ablated = a.clone()
        ablated[:, k] = 0
        weights[:, k] = (y - head(model, ablated).gather(1, classes[:, None])[:, 0]) / y
    return scaled((weights[..., None, None] * a).sum(1), x.shape[-2:])


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
@pytest.mark.parametrize(
    ("method", "by_hand"), [("scorecam", score_cam_by_hand), ("ablationcam", ablation_cam_by_hand)]
)
def test_perturbation_cams_equal_their_formula_in_any_batch_size(method, by_hand, batch_size):
    model = Tiny().eval()
    x = torch.randn(3, 3, 16, 16)
    classes = torch.tensor([0, 2, 1])
    ours = create_cam(method, model, "conv2", batch_size=batch_size)(x, classes)
    torch.testing.assert_close(ours, by_hand(model, x, classes), atol=1e-5, rtol=0)
    assert all_hooks(model) == 0


def test_score_cam_scores_a_single_logit_by_the_targets_probability():
    model = Tiny(classes=1).eval()
    x = torch.randn(2, 3, 16, 16)
    cam = create_cam("scorecam", model, "conv2", batch_size=4)
    for classes in (torch.tensor([1, 1]), torch.tensor([0, 1])):
        torch.testing.assert_close(cam(x, classes), score_cam_by_hand(model, x, classes), atol=1e-5, rtol=0)


@torch.no_grad()
def test_occlusion_is_the_mean_fall_of_probability_over_the_windows_covering_a_pixel():
    model = Tiny().eval()
    x = torch.randn(2, 3, 12, 12)
    classes = torch.tensor([1, 0])
    result = create_cam("occlusion", model, window=4, stride=2, batch_size=5).compute(x, classes)
    before = torch.softmax(model(x), 1).gather(1, classes[:, None])[:, 0]
    total, count = torch.zeros(2, 12, 12), torch.zeros(12, 12)
    for row in range(0, 9, 2):
        for column in range(0, 9, 2):
            hidden = x.clone()
            hidden[:, :, row : row + 4, column : column + 4] = 0
            fall = before - torch.softmax(model(hidden), 1).gather(1, classes[:, None])[:, 0]
            total[:, row : row + 4, column : column + 4] += fall[:, None, None]
            count[row : row + 4, column : column + 4] += 1
    torch.testing.assert_close(result.raw["input"], total / count, atol=1e-6, rtol=0)
    positive = (total / count).clamp_min(0)
    low, high = positive.flatten(1).min(1).values, positive.flatten(1).max(1).values
    torch.testing.assert_close(result.maps, (positive - low[:, None, None]) / (high - low)[:, None, None])


def test_occlusion_windows_reach_every_edge_and_bad_settings_are_refused():
    from attnscope.explain.perturbation import Occlusion

    window, corners = Occlusion(Tiny(), window=5, stride=4).windows(13, 10)
    assert window == 5 and sorted({r for r, _ in corners}) == [0, 4, 8] and sorted({c for _, c in corners}) == [0, 4, 5]
    assert Occlusion(Tiny()).windows(64, 64)[0] == 8  # an eighth of the side by default
    with pytest.raises(ConfigError, match="batch_size=0 must be an integer >= 1"):
        create_cam("scorecam", Tiny(), "conv2", batch_size=0)
    with pytest.raises(ConfigError, match="window=-1 and stride=0 must be >= 0"):
        create_cam("occlusion", Tiny(), window=-1)
