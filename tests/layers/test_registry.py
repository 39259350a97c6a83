import pytest

from attnscope import ConfigError, create_attn, list_attn
from attnscope.layers import CBAM, GlobalSelfAttention, GridAttention, LocalSelfAttention, SqueezeExcite
from attnscope.layers.registry import describe_attn


def test_lists_the_five_layers():
    assert list_attn() == ["attn_pool", "cbam", "global", "grid", "local", "se"]


@pytest.mark.parametrize(
    "name, cls",
    [
        ("cbam", CBAM),
        ("global", GlobalSelfAttention),
        ("grid", GridAttention),
        ("local", LocalSelfAttention),
        ("se", SqueezeExcite),
    ],
)
def test_creates_each_layer_with_its_options(name, cls):
    layer = create_attn(name.upper(), 32)
    assert type(layer) is cls
    assert describe_attn(name)


def test_options_reach_the_constructor():
    assert create_attn("se", 64, rd_ratio=1 / 4).fc1.out_channels == 16
    assert create_attn("local", 16, kernel_size=3, heads=2).kernel_size == 3


def test_an_unknown_name_is_a_value_error_listing_the_known_ones():
    with pytest.raises(
        ValueError,
        match="unknown attention layer 'nonlocal'; known attention layers: attn_pool, cbam, global, grid, local, se",
    ):
        create_attn("nonlocal", 16)


def test_an_unknown_option_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"has no option\(s\) \['ratio'\].*rd_ratio"):
        create_attn("se", 16, ratio=4)
