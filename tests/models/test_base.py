"""What every classifier shares: the ``head`` option (average or attention pooling of the last map)."""

import pytest
import torch

from attnscope import ConfigError, capture_attention, create_model
from attnscope.layers import AttentionPool2d

MODELS = ["vgg_tiny", "attn_vgg_tiny", "resnet_tiny", "attn_resnet_tiny"]


@pytest.mark.parametrize("name", MODELS)
def test_attention_pooling_head_starts_as_average_pooling_and_is_captured(name):
    torch.manual_seed(0)
    average = create_model(name, num_classes=3, in_chans=1).eval()
    torch.manual_seed(0)
    pooled = create_model(name, num_classes=3, in_chans=1, head="attn_pool").eval()
    assert isinstance(pooled.head_pool, AttentionPool2d)
    pooled.load_state_dict(average.state_dict(), strict=False)
    x = torch.randn(2, 1, 64, 64)
    with capture_attention(pooled) as maps:
        logits = pooled(x)
    torch.testing.assert_close(logits, average(x))
    weights = maps["head_pool"]
    assert weights.shape[:2] == (2, 1)
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.ones(2))
    assert "head_pool" in pooled.default_cfg.attention_taps


def test_the_embedding_is_the_attention_weighted_sum_of_the_last_map():
    torch.manual_seed(1)
    model = create_model("resnet_tiny", num_classes=2, in_chans=3, stem="small", head="gated_attn_pool").eval()
    torch.nn.init.normal_(model.head_pool.score.weight)
    x = torch.randn(2, 3, 32, 32)
    with capture_attention(model) as maps:
        embedding, last = model.forward_embedding(x)
    expected = (last * maps["head_pool"]).sum(dim=(2, 3))
    torch.testing.assert_close(embedding, expected)
    assert not torch.allclose(embedding, last.mean(dim=(2, 3)))
    assert model.head_pool.gated


def test_agcnn_branches_take_the_head_through_backbone_options():
    model = create_model(
        "agcnn_resnet50", num_classes=2, in_chans=1, backbone="resnet_tiny", backbone_options={"head": "attn_pool"}
    )
    assert isinstance(model.global_branch.head_pool, AttentionPool2d)
    assert isinstance(model.local_branch.head_pool, AttentionPool2d)


def test_an_unknown_head_names_the_choices():
    with pytest.raises(ConfigError, match="head='max'.*avg, attn_pool, gated_attn_pool"):
        create_model("vgg_tiny", num_classes=2, in_chans=1, head="max")


def test_attention_pooling_in_resnet_blocks_starts_as_the_identity():
    """attn="attn_pool" reweighs each block's positions by x * a * (H W); a new layer's weights are uniform,
    so the network computes what the same network without it computes."""
    torch.manual_seed(2)
    plain = create_model("resnet_tiny", num_classes=2, stem="small").eval()
    pooled = create_model("resnet_tiny", num_classes=2, stem="small", attn="attn_pool", attn_stages=[3, 4]).eval()
    pooled.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with capture_attention(pooled) as maps:
        logits = pooled(x)
    torch.testing.assert_close(logits, plain(x))
    assert sorted(maps) == ["layer3.0.attn", "layer4.0.attn"]
    torch.testing.assert_close(maps["layer4.0.attn"].sum(dim=(1, 2, 3)), torch.ones(2))
