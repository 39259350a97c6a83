import math

import pytest
import torch
from torch.nn import functional as F

from attnscope.errors import ConfigError
from attnscope.losses import (
    AttentionConsistencyLoss,
    AttentionMaskLoss,
    FocalLoss,
    SelfFocalAttentionLoss,
    dice_loss,
    energy_outside,
)


def test_focal_gamma0_no_alpha_is_bce_exactly():
    logits = torch.randn(64) * 5
    target = torch.randint(0, 2, (64,)).float()
    ours = FocalLoss(alpha=None, gamma=0, task="binary")(logits, target)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(logits, target), rtol=0, atol=1e-7)


def test_focal_gamma0_no_alpha_is_cross_entropy_exactly():
    logits = torch.randn(32, 5) * 4
    target = torch.randint(0, 5, (32,))
    ours = FocalLoss(alpha=None, gamma=0, task="multiclass")(logits, target)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target), rtol=0, atol=1e-6)


def test_focal_gamma0_multilabel_is_bce_per_label():
    logits = torch.randn(16, 4) * 3
    target = torch.randint(0, 2, (16, 4)).float()
    ours = FocalLoss(alpha=None, gamma=0, task="multilabel", reduction="none")(logits, target)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(logits, target, reduction="none"))


def reference_binary_focal(logits, target, alpha, gamma):
    """The textbook formula in float64, where sigmoid is still exact enough."""
    p = torch.sigmoid(logits.double())
    p_t = target * p + (1 - target) * (1 - p)
    alpha_t = target * alpha + (1 - target) * (1 - alpha)
    return -(alpha_t * (1 - p_t) ** gamma * torch.log(p_t))


def test_focal_binary_matches_formula():
    logits = torch.randn(50) * 3
    target = torch.randint(0, 2, (50,)).float()
    ours = FocalLoss(alpha=0.25, gamma=2.0, reduction="none")(logits, target)
    torch.testing.assert_close(
        ours.double(), reference_binary_focal(logits, target.double(), 0.25, 2.0), rtol=1e-5, atol=1e-7
    )


def test_focal_extreme_logits_are_exact_and_finite():
    logits = torch.tensor([50.0, -50.0, 50.0, -50.0], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = FocalLoss(alpha=None, gamma=0, reduction="none")(logits, target)
    # right answers cost exp(-50) (not 0 from a rounded sigmoid); wrong ones cost 50 (not inf)
    torch.testing.assert_close(loss, torch.tensor([math.exp(-50), math.exp(-50), 50.0, 50.0]), rtol=1e-6, atol=0)
    focal = FocalLoss(alpha=0.25, gamma=2.0, reduction="none")(logits, target)
    assert torch.isfinite(focal).all()
    torch.testing.assert_close(focal[2:], torch.tensor([0.75 * 50.0, 0.25 * 50.0]))
    focal.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # a wrong answer at logit 50 pushes with gradient ~ alpha_t (d/dx of alpha_t * x)
    torch.testing.assert_close(logits.grad[2], torch.tensor(0.75), rtol=1e-4, atol=0)


def test_focal_multiclass_per_class_alpha_and_gamma():
    logits = torch.randn(20, 3)
    target = torch.randint(0, 3, (20,))
    alpha = torch.tensor([0.2, 0.3, 0.5])
    ours = FocalLoss(alpha=alpha, gamma=1.5, task="multiclass", reduction="none")(logits, target)
    p_t = torch.softmax(logits.double(), 1).gather(1, target[:, None]).squeeze(1)
    expected = -alpha.double()[target] * (1 - p_t) ** 1.5 * torch.log(p_t)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-7)


def test_focal_down_weights_easy_examples():
    easy = FocalLoss(alpha=None, gamma=2.0)(torch.tensor([4.0]), torch.tensor([1.0]))
    plain = FocalLoss(alpha=None, gamma=0.0)(torch.tensor([4.0]), torch.tensor([1.0]))
    assert easy < plain * 0.001


def test_focal_refuses_bad_options():
    with pytest.raises(ConfigError, match="task"):
        FocalLoss(task="regression")
    with pytest.raises(ConfigError, match="gamma"):
        FocalLoss(gamma=-1)
    with pytest.raises(ConfigError, match="scalar alpha"):
        FocalLoss(alpha=torch.tensor([0.1, 0.9]), task="binary")


def square_mask(size=16, start=4, stop=12):
    mask = torch.zeros(1, 1, size, size)
    mask[..., start:stop, start:stop] = 1
    return mask


def softmax_map_at(size, row, col, sharpness=4.0):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    score = -sharpness * ((yy - row) ** 2 + (xx - col) ** 2).float() / size
    return torch.softmax(score.flatten(), 0).view(1, 1, size, size)


def test_supervision_losses_fall_as_the_map_moves_into_the_mask():
    mask = square_mask()
    for kind, function in (("dice", dice_loss), ("energy", energy_outside)):
        values = [function(softmax_map_at(16, p, p), mask).item() for p in (0, 3, 6, 8)]
        assert values == sorted(values, reverse=True), (kind, values)
        assert values[0] - values[-1] > 0.2


def test_energy_outside_is_the_mass_outside():
    attention = torch.zeros(1, 1, 4, 4)
    attention[0, 0, 0, 0] = 0.25  # outside
    attention[0, 0, 2, 2] = 0.75  # inside
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    torch.testing.assert_close(energy_outside(attention, mask), torch.tensor([0.25]))


def test_attention_mask_loss_weights_taps_resizes_and_skips_empty_masks():
    mask = square_mask(16).repeat(2, 1, 1, 1)
    mask[1] = 0  # no lesion: left out
    maps = {"pool3": softmax_map_at(8, 0, 0).repeat(2, 1, 1, 1), "pool4": softmax_map_at(4, 2, 2).repeat(2, 1, 1, 1)}
    loss = AttentionMaskLoss({"pool3": 0.001, "pool4": 0.01}, kind="energy")(maps, mask)
    small = torch.nn.functional.adaptive_avg_pool2d(mask[:1], (8, 8))
    smaller = torch.nn.functional.adaptive_avg_pool2d(mask[:1], (4, 4))
    expected = 0.001 * energy_outside(maps["pool3"][:1], small) + 0.01 * energy_outside(maps["pool4"][:1], smaller)
    torch.testing.assert_close(loss, expected.squeeze())


def test_attention_mask_loss_gives_gradient_to_the_map():
    score = torch.zeros(1, 1, 8, 8, requires_grad=True)
    maps = {"gate": torch.softmax(score.flatten(1), 1).view(1, 1, 8, 8)}
    mask = square_mask(16)
    AttentionMaskLoss({"gate": 1.0}, kind="dice")(maps, mask).backward()
    inside = score.grad[0, 0, 2:6, 2:6]
    assert (inside < 0).all()  # descending the loss raises the scores inside the mask


def test_attention_mask_loss_refuses_unknown_taps_and_channel_maps():
    loss = AttentionMaskLoss({"pool9": 1.0})
    with pytest.raises(ConfigError, match="pool9.*pool3"):
        loss({"pool3": torch.rand(1, 1, 4, 4)}, square_mask())
    with pytest.raises(ConfigError, match="channel gate"):
        AttentionMaskLoss({"se": 1.0})({"se": torch.rand(1, 16)}, square_mask())
    with pytest.raises(ConfigError, match="kind"):
        AttentionMaskLoss({"a": 1.0}, kind="l2")


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_focal_alpha_as_a_scale_multiplies_every_sample_as_the_tutorial_does(task):
    shape = (40,) if task == "binary" else (10, 4)
    logits, target = torch.randn(shape) * 3, torch.randint(0, 2, shape).float()
    ours = FocalLoss(alpha=0.25, gamma=2.0, task=task, reduction="none", alpha_mode="scale")(logits, target)
    p = torch.sigmoid(logits.double())
    p_t = target * p + (1 - target) * (1 - p)
    expected = -(0.25 * (1 - p_t) ** 2.0 * torch.log(p_t))  # positives and negatives alike
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-7)
    # Lin et al.'s meaning weighs the negatives by 0.75: three times the tutorial's weight
    lin = FocalLoss(alpha=0.25, gamma=2.0, task=task, reduction="none")(logits, target)
    negatives = target == 0
    torch.testing.assert_close(lin[negatives], 3 * ours[negatives])
    torch.testing.assert_close(lin[~negatives], ours[~negatives])


def test_focal_is_cross_entropy_only_without_alpha():
    logits, target = torch.randn(30) * 2, torch.randint(0, 2, (30,)).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weighted = FocalLoss(alpha=0.25, gamma=0.0, reduction="none")(logits, target)
    torch.testing.assert_close(weighted, bce * torch.where(target == 1, 0.25, 0.75))
    scaled = FocalLoss(alpha=0.25, gamma=0.0, reduction="none", alpha_mode="scale")(logits, target)
    torch.testing.assert_close(scaled, 0.25 * bce)
    torch.testing.assert_close(FocalLoss(alpha=None, gamma=0.0, reduction="none")(logits, target), bce)


def test_focal_alpha_mode_is_checked_with_the_values_it_needs():
    with pytest.raises(ConfigError, match=r"alpha_mode='lin': use one of \('class', 'scale'\)"):
        FocalLoss(alpha_mode="lin")
    with pytest.raises(ConfigError, match="multiplies every sample by one number"):
        FocalLoss(alpha=torch.tensor([0.2, 0.3, 0.5]), task="multiclass", alpha_mode="scale")
    from attnscope.engine.config import load_config

    for setting in ("loss.alpha=[0.2, 0.8]", "data.class_weights=true"):
        with pytest.raises(ConfigError, match="alpha_mode=scale multiplies every sample by one number"):
            load_config(None, ["loss.alpha_mode=scale", setting])
    assert load_config(None, ["loss.alpha_mode=scale"]).loss.alpha == 0.25


def flip_move(maps):
    """A move for the consistency loss: a horizontal flip, nothing from outside."""
    return maps.flip(-1), torch.ones_like(maps)


def test_consistency_is_two_minus_twice_the_correlation_of_the_moved_map_and_the_map_of_the_moved():
    torch.manual_seed(0)
    first = {"pool3": torch.rand(3, 1, 4, 4), "pool4": torch.rand(3, 1, 2, 2)}
    second = {"pool3": torch.rand(3, 1, 4, 4), "pool4": torch.rand(3, 1, 2, 2)}
    loss = AttentionConsistencyLoss({"pool3": 0.5, "pool4": 2.0})(first, second, flip_move)
    expected = 0.0
    for name, weight in (("pool3", 0.5), ("pool4", 2.0)):
        for a, b in zip(first[name], second[name], strict=True):
            pair = torch.stack([a.flip(-1).flatten(), b.flatten()]).double()
            expected += weight * 2 * (1 - torch.corrcoef(pair)[0, 1].item()) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_consistency_is_zero_for_maps_that_follow_the_content_and_not_for_maps_fixed_in_the_frame():
    torch.manual_seed(0)
    content = torch.rand(2, 1, 6, 6)
    loss = AttentionConsistencyLoss({"gate": 1.0})
    follows = loss({"gate": content}, {"gate": 3 * content.flip(-1) + 1}, flip_move)  # scale and offset are free
    assert follows.item() == pytest.approx(0.0, abs=1e-6)
    corner = torch.zeros(2, 1, 6, 6)
    corner[..., 0, 0] = 1  # always the top-left cell, whatever the image shows
    fixed = loss({"gate": corner}, {"gate": corner}, flip_move)
    assert fixed.item() == pytest.approx(2 * (1 - (-1 / 35)))  # two single cells: correlation -1/35
    flat = torch.full((2, 1, 6, 6), 0.99)  # gates open everywhere: no structure, nothing to reward
    noisy = flat + 1e-4 * torch.randn(2, 1, 6, 6)
    assert loss({"gate": noisy}, {"gate": flat + 1e-4 * torch.randn(2, 1, 6, 6)}, flip_move).item() > 1.5


def test_consistency_leaves_out_what_came_from_outside_and_names_unknown_taps():

    def half_outside(m):
        inside = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
        return m * inside + (1 - inside) * 9, inside

    maps = torch.tensor([[[[1.0, 5.0], [2.0, 3.0]]]])
    other = torch.tensor([[[[1.0, -7.0], [2.0, 3.0]]]])
    loss = AttentionConsistencyLoss({"gate": 1.0})({"gate": maps}, {"gate": other}, half_outside)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # the one disagreeing cell came from outside the image
    with pytest.raises(ConfigError, match="pool9.*gate"):
        AttentionConsistencyLoss({"pool9": 1.0})({"gate": maps}, {"gate": maps}, flip_move)
    with pytest.raises(ConfigError, match="supervision.consistency"):
        AttentionConsistencyLoss({})


def self_focal_reference(attention, threshold, ignore_th, gamma):
    """The self-guided focal attention loss of one map written out, image by image, position by position."""
    terms = []
    for image in attention[:, 0]:
        total = float(image.sum())
        scaled = [min(1.0, max(1e-6, float(v) / total * image.numel() / 16)) for v in image.flatten()]
        peak = max(scaled)
        if peak < ignore_th:
            continue
        positives = [v for v in scaled if v >= threshold * peak]
        terms.append(sum(-((1 - v) ** gamma) * math.log(v) for v in positives) / len(positives))
    return sum(terms) / len(terms) if terms else 0.0


def test_self_focal_is_the_focal_term_on_the_positions_the_map_favours():
    torch.manual_seed(0)
    maps = torch.rand(3, 1, 8, 8) ** 4
    maps[2] = 1.0  # flat: peak 1/16 < ignore_th, left out
    loss = SelfFocalAttentionLoss({"pool3": 2.0}, threshold=0.5, ignore_th=0.1, gamma=2.0)
    expected = 2.0 * self_focal_reference(maps, 0.5, 0.1, 2.0)
    assert float(loss({"pool3": maps})) == pytest.approx(expected, rel=1e-5)
    only_flat = {"pool3": torch.ones(2, 1, 8, 8)}
    assert float(loss(only_flat)) == 0.0
    assert float(SelfFocalAttentionLoss({"pool3": 1.0}, ignore_th=0.0)(only_flat)) > 0


def test_self_focal_gradient_moves_mass_onto_the_favoured_positions():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 6, 6, requires_grad=True)
    loss = SelfFocalAttentionLoss({"gate": 1.0}, ignore_th=0.0)
    favoured = None
    shares = []
    for _ in range(30):
        maps = torch.softmax(logits.flatten(1), dim=1).reshape(2, 1, 6, 6)
        if favoured is None:
            favoured = maps.flatten(1) >= 0.5 * maps.flatten(1).amax(1, keepdim=True)
        shares.append(float((maps.detach().flatten(1) * favoured).sum(1).mean()))
        logits.grad = None
        loss({"gate": maps}).backward()
        with torch.no_grad():
            logits -= 1.0 * logits.grad
    assert shares[-1] > shares[0] + 0.3


def test_self_focal_needs_no_mask_but_checks_its_options_and_taps():
    with pytest.raises(ConfigError, match="threshold"):
        SelfFocalAttentionLoss({"pool3": 1.0}, threshold=0.0)
    with pytest.raises(ConfigError, match="at least one tap"):
        SelfFocalAttentionLoss({})
    with pytest.raises(ConfigError, match=r"names tap\(s\) \['pool9'\]"):
        SelfFocalAttentionLoss({"pool9": 1.0})({"pool3": torch.rand(1, 1, 4, 4)})
    with pytest.raises(ConfigError, match="channel gate"):
        SelfFocalAttentionLoss({"se": 1.0})({"se": torch.rand(2, 8)})


@pytest.mark.parametrize("gamma, alpha", [(0.0, None), (2.0, 0.25)])
def test_labels_left_out_are_masked_out_of_the_multilabel_loss_and_its_mean(gamma, alpha):
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 3
    target = torch.randint(0, 2, (6, 4)).float()
    target[0, 1] = target[3, 0] = target[5, 3] = math.nan  # uncertain, ignored
    known = ~torch.isnan(target)
    loss = FocalLoss(alpha=alpha, gamma=gamma, task="multilabel")(logits, target)
    per_entry = FocalLoss(alpha=alpha, gamma=gamma, task="multilabel", reduction="none")(
        logits[known][:, None], target[known][:, None]
    )
    assert torch.allclose(loss, per_entry.mean(), atol=1e-6)  # the mean over the 21 known entries only
    if gamma == 0.0:
        assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits[known], target[known]), atol=1e-6)
    logits.requires_grad_(True)
    FocalLoss(alpha=alpha, gamma=gamma, task="multilabel")(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and not logits.grad[~known].any()  # no gradient from a left-out label
