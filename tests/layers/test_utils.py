import pytest
import torch
from torch import nn

from attnscope import ConfigError
from attnscope.layers._utils import HardSigmoid, make_activation, make_divisible


@pytest.mark.parametrize(
    "value, divisor, expected",
    [(4, 8, 8), (12, 8, 16), (11.9, 8, 16), (8.8, 8, 8), (32, 8, 32), (37, 8, 40), (20, 16, 32), (3, 1, 3)],
)
def test_make_divisible(value, divisor, expected):
    result = make_divisible(value, divisor)
    assert result == expected
    assert result % divisor == 0 and result >= 0.9 * value


def test_make_activation_accepts_names_classes_modules_and_functions():
    x = torch.linspace(-4, 4, 9)
    assert isinstance(make_activation("ReLU", "act_layer"), nn.ReLU)
    assert isinstance(make_activation(nn.GELU, "act_layer"), nn.GELU)
    module = nn.Tanh()
    assert make_activation(module, "act_layer") is module
    torch.testing.assert_close(make_activation(torch.sigmoid, "gate_layer")(x), torch.sigmoid(x))
    torch.testing.assert_close(HardSigmoid()(x), torch.clamp(x / 6 + 0.5, 0, 1))
    assert isinstance(make_activation(None, "act_layer"), nn.Identity)


def test_make_activation_names_the_option_at_fault():
    with pytest.raises(ConfigError, match="act_layer must be .*got 42"):
        make_activation(42, "act_layer")
