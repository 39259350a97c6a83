import pytest

from attnscope.engine.config import RunConfig, apply_settings, dump_config, load_config, named_configs
from attnscope.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    config = load_config(None, ["data.augment.crop_scale=[0.5, 1.0]", "supervision.weights={pool3: 0.001}"])
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(config))
    again = load_config(path)
    assert again.to_dict() == load_config(None, []).to_dict() | {
        "data": again.data.to_dict(),
        "supervision": {
            "kind": "dice",
            "weights": {"pool3": 0.001},
            "consistency": {},
            "threshold": 0.5,
            "ignore_th": 0.1,
            "gamma": 2.0,
        },
    }
    assert list(again.data.augment.crop_scale) == [0.5, 1.0]


def test_settings_apply_in_order_over_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {lr: 0.5, name: sgd}\ntrainer: {epochs: 3}\n")
    config = load_config(path, ["optim.lr=0.01", "trainer.epochs=7", "optim.lr=0.02"])
    assert (config.optim.lr, config.optim.name, config.trainer.epochs) == (0.02, "sgd", 7)


def test_settings_do_not_touch_the_input():
    values = {"optim": {"lr": 1.0}}
    assert apply_settings(values, ["optim.lr=2"]) == {"optim": {"lr": 2}}
    assert values == {"optim": {"lr": 1.0}}


@pytest.mark.parametrize(
    "setting, message",
    [
        ("optim.learning_rate=1", r"optim.*learning_rate.*lr"),
        ("trainer.epochs=0", r"trainer.epochs=0"),
        ("optim.name=lbfgs", r"optim.name='lbfgs'.*adam"),
        ("data.colour=1", r"data config.*colour"),
        ("modle.name=x", r"run config.*modle"),
        ("optim.lr", r"section.option=value"),
        ("trainer.ema_decay=1.5", r"ema_decay"),
    ],
)
def test_bad_settings_are_refused_by_name(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [setting])


def test_shipped_configs_load_and_unknown_names_list_them(tmp_path):
    assert "demo" in named_configs()
    demo = load_config("demo")
    assert demo.model.name == "attn_vgg_tiny" and demo.data.source == "synthetic_lesions"
    with pytest.raises(ConfigError, match="shipped configs: .*demo"):
        load_config("no_such_config")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml.*YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)


def test_from_dict_refuses_a_section_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match="'optim' must be a mapping"):
        RunConfig.from_dict({"optim": 3})


def test_the_melanoma_tutorial_config_is_the_tutorials_recipe_as_it_is():
    config = load_config("melanoma_tutorial")
    data, augment = config.data, config.data.augment
    assert (config.model.name, config.model.pretrained, data.image_size) == ("attn_vgg16_bn", True, 224)
    assert (data.batch_size, data.eval_batch_size) == (100, 50)
    assert data.undersample == {"benign": 6000} and data.undersample_before_split
    assert (data.val_fraction, data.test_fraction) == (0.2, 0.0) and "group_column" not in data.source_options
    assert (augment.rotation, augment.rotation_p, augment.p) == (10, 1.0, 0.5)
    assert augment.hflip and not augment.vflip
    assert augment.crop_scale is None and not augment.rot90 and augment.color_jitter == 0
    loss = config.loss
    assert (loss.name, loss.alpha, loss.gamma, loss.alpha_mode) == ("focal", 0.25, 2.0, "scale")
    assert (config.optim.name, config.optim.lr, config.schedule.name) == ("adam", 1e-4, "none")
    assert config.trainer.epochs == 2


def test_the_shipped_melanoma_config_is_the_recommended_recipe():
    config = load_config("melanoma", ["data.source_options.csv_path=/data/marking.csv"])
    assert config.data.source == "csv" and config.data.source_options["csv_path"] == "/data/marking.csv"
    assert config.data.undersample == {"benign": 6000} and config.data.val_fraction == 0.2
    assert (config.data.augment.rotation, config.data.augment.hflip, config.data.augment.vflip) == (10, True, True)
    assert (config.optim.name, config.optim.lr, config.loss.name) == ("adam", 1e-4, "focal")
    assert config.model.name == "attn_vgg16_bn" and config.data.image_size == 224


@pytest.mark.parametrize(
    "setting, message",
    [
        ("supervision.kind=bogus", "supervision.kind='bogus' is not a kind: use one of dice, energy, self_focal"),
        ("supervision.threshold=0", "supervision.threshold=0 must lie in (0, 1]"),
        ("supervision.ignore_th=2", "supervision.ignore_th=2 must lie in [0, 1]"),
        ("supervision.weights={pool3: -1}", "supervision.weights={'pool3': -1} must map attention taps to weights"),
        ("supervision.consistency=[pool3]", "supervision.consistency=['pool3'] must map attention taps to weights"),
        ("loss.gamma=-1", "loss.gamma=-1 must be a number >= 0"),
        ("loss.alpha=[0.5, 2]", "loss.alpha=[0.5, 2] must be null, a number in [0, 1]"),
        ("optim.momentum=1", "optim.momentum=1 must lie in [0, 1)"),
        ("schedule.step_size=0", "schedule.step_size=0 must be an integer >= 1"),
        ("schedule.pct_start=1", "schedule.pct_start=1 must lie in (0, 1)"),
        ("trainer.epochs=1.5", "trainer.epochs=1.5 must be an integer >= 1"),
        ("trainer.devices=0", "trainer.devices=0 must be a number of devices >= 1"),
        ("trainer.grad_clip=0", "trainer.grad_clip=0 must be null or a number > 0"),
        ("trainer.seed=yes", "trainer.seed=True must be an integer"),
        ("model.name=resnet51", "unknown model 'resnet51'; known models:"),
        (
            "model.options={normalise: softmax}",
            "model.options: model 'attn_vgg_tiny' has no option(s) ['normalise']; its options are: normalize",
        ),
        ("data.source=nope", "data.source='nope': unknown data source; known data sources: cluttered, csv"),
        ("data.source_options={bogus: 1}", "data source 'synthetic_lesions' has no option(s) ['bogus']"),
        ("data.image_size=0", "data.image_size=0 must be an integer from 1 to 4096"),
        ("data.image_size=1000000000", "data.image_size=1000000000 must be an integer from 1 to 4096"),
        ("data.mode=CMYK", "data.mode='CMYK' is not one of RGB, L"),
        ("data.window=gamma", "data.window='gamma' is not one of auto, lut, window, range, minmax, percentile, divide"),
        ("data.val_fraction=1", "data.val_fraction=1 must lie in [0, 1)"),
        ("data.augment={p: 2}", "data.augment.p=2 must lie in [0, 1]"),
    ],
)
def test_every_value_is_checked_when_the_config_is_loaded(setting, message):
    """Regression: supervision.kind=bogus was accepted (and recorded) when supervision.weights was empty."""
    with pytest.raises(ConfigError) as error:
        load_config(None, [setting])
    assert message in str(error.value)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text, so not a YAML config"),
        (b"", "a run config is a mapping of sections .*, not None"),
        (b"- model\n- data\n", "a run config is a mapping of sections .*, not \\['model', 'data'\\]"),
        (b"model: " + b"[" * 5000 + b"]" * 5000, "nested more than 16 levels deep"),
        (b"model: {options: " + b"[" * 20 + b"]" * 20 + b"}", "nested more than 16 levels deep"),
        (ALIAS_BOMB.encode(), "more than 100,000 values"),
    ],
)
def test_a_config_file_that_is_not_a_small_mapping_is_one_line(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and len(str(caught.value)) < 300


def test_what_an_error_repeats_of_a_value_stays_short():
    # an alias bomb just under the size limit, in a checked value: the message quotes a bounded part of it
    small_bomb = "[" + ", ".join(["&a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"] + ["*a"] * 99) + "]"
    with pytest.raises(ConfigError, match=r"optim.lr=\[\[1, 2, 3, 4, \.\.\.\], .*must be") as caught:
        load_config(None, [f"optim.lr={small_bomb}"])
    assert len(str(caught.value)) < 300
    with pytest.raises(ConfigError, match="nested more than 16 levels deep"):
        load_config(None, ["optim.lr=" + "[" * 5000 + "]" * 5000])
    with pytest.raises(ConfigError, match=r"setting 'x y+\.\.\.y+' must look like") as caught:
        load_config(None, ["x " + "y" * 10_000])
    assert len(str(caught.value)) < 300
