import pytest
import torch
from torch.nn import functional as F

from attnscope import ConfigError
from attnscope.models import create_model
from attnscope.models.agcnn import crop_and_resize, heat_map, largest_region, region_boxes


def test_heat_map_is_the_channel_max_of_magnitudes_scaled_per_image():
    features = torch.zeros(2, 3, 2, 2)
    features[0, 1, 0, 0], features[0, 2, 1, 1], features[0, 0, 0, 1] = -4.0, 2.0, 1.0
    features[1] = 5.0  # no contrast
    heat = heat_map(features)
    torch.testing.assert_close(heat[0], torch.tensor([[1.0, 0.25], [0.0, 0.5]]))
    torch.testing.assert_close(heat[1], torch.ones(2, 2))


def test_the_largest_eight_connected_region_wins():
    mask = torch.tensor([[1, 0, 0, 0, 1], [0, 1, 0, 0, 1], [0, 0, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)[None]
    region = largest_region(mask)[0]
    # (0,0)-(1,1)-(2,2) join along the diagonal, (3,1) touches (2,2) diagonally, (3,0) touches (3,1)
    assert region.nonzero().tolist() == [[0, 0], [1, 1], [2, 2], [3, 0], [3, 1]]


def test_ties_go_to_the_first_region_in_raster_order():
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)[None]
    assert largest_region(mask)[0].tolist() == [[True, False, False]]


@pytest.mark.parametrize("input_size, expected", [((224, 224), [64, 32, 160, 96]), ((100, 70), [28, 10, 72, 30])])
def test_the_box_covers_the_region_cells_in_input_pixels(input_size, expected):
    heat = torch.zeros(1, 7, 7)
    heat[0, 2:5, 1:3] = 0.9  # the region: rows 2-4, columns 1-2
    heat[0, 6, 6] = 1.0  # brighter but smaller
    assert region_boxes(heat, 0.7, input_size).tolist() == [expected]


def test_the_crop_is_exactly_the_box_of_the_input_resized_back():
    images = torch.randn(2, 1, 224, 224)
    boxes = torch.tensor([[64, 32, 160, 96], [0, 0, 224, 224]])
    crops = crop_and_resize(images, boxes)
    expected = F.interpolate(images[:1, :, 64:160, 32:96], size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.equal(crops[:1], expected)
    assert torch.equal(crops[1], images[1])


def test_the_local_branch_sees_the_crop_of_a_planted_heat_map(monkeypatch):
    model = create_model("agcnn_tiny", num_classes=14, in_chans=1).eval()
    planted = torch.zeros(1, 8, 7, 7)
    planted[0, 3, 2:5, 1:3] = 1.0
    monkeypatch.setattr(
        model.global_branch,
        "forward_embedding",
        lambda x: (torch.zeros(x.shape[0], model.global_branch.num_features), planted),
    )
    images = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        out = model.forward_branches(images)
    assert out["boxes"].tolist() == [[64, 32, 160, 96]]
    assert torch.equal(out["crops"], crop_and_resize(images, out["boxes"]))
    with torch.no_grad():
        local = model.local_branch(out["crops"])
    torch.testing.assert_close(out["local"], local)
    assert out["global"].shape == out["local"].shape == out["fusion"].shape == (1, 14)


@pytest.mark.parametrize(
    "stage, branch", [("global", "global_branch"), ("local", "local_branch"), ("fusion", "fusion")]
)
def test_each_stage_trains_only_its_branch(stage, branch):
    model = create_model("agcnn_tiny", num_classes=14, stage=stage)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    for name, parameter in model.named_parameters():
        if name.startswith(branch + "."):
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None and not parameter.requires_grad, name


@pytest.mark.parametrize("stage", ["global", "local", "fusion"])
def test_frozen_branches_stay_in_eval_mode_and_a_training_step_leaves_them_bit_identical(stage):
    torch.manual_seed(0)
    model = create_model("agcnn_tiny", num_classes=2, stage=stage, backbone_options={"dropout": 0.5}).train()
    trained = {"global": "global_branch", "local": "local_branch", "fusion": "fusion"}[stage]
    frozen = [name for name in ("global_branch", "local_branch", "fusion") if name != trained]
    assert all(not module.training for name in frozen for module in getattr(model, name).modules())
    assert all(module.training for module in getattr(model, trained).modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 64, 64)).square().sum().backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in before.items():  # parameters and batch-norm buffers alike
        if key.split(".")[0] in frozen:
            assert torch.equal(after[key], value), key
    moved = [k for k in before if k.startswith(trained + ".") and not torch.equal(after[k], before[k])]
    assert moved, f"the {stage} stage's own branch did not train"
    model.eval()
    assert not any(module.training for module in model.modules())


def test_forward_returns_the_logits_of_the_stage_being_trained():
    model = create_model("agcnn_tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        branches = model.forward_branches(x)
        for stage in ("global", "local", "fusion"):
            model.set_stage(stage)
            torch.testing.assert_close(model(x), branches[stage])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tau": 0.0}, "tau=0.0"),
        ({"stage": "all"}, "stage='all'"),
        ({"backbone": "resnet51"}, "known models"),
        ({"backbone": "agcnn_tiny"}, "plain classifier"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        create_model("agcnn_tiny", **options)
