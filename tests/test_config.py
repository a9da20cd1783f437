import pytest

import selfsup
from selfsup.config import PretrainConfig, build_config, resolve_config
from selfsup.errors import SelfsupError


def test_defaults_give_a_minutes_budget():
    assert PretrainConfig().minutes == 5.0
    assert PretrainConfig(steps=10).minutes is None


def test_recipe_then_cli_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: simclr\nbatch-size: 64\nlr: 1\nmethod_options: {temperature: 0.2}\n")
    config = resolve_config(recipe, {"batch_size": 32, "seed": None})
    assert config.batch_size == 32  # the CLI wins over the recipe
    assert config.lr == 1.0 and isinstance(config.lr, float)  # int coerced to float
    assert config.method_options == {"temperature": 0.2}


def test_unknown_key_lists_valid_options():
    with pytest.raises(SelfsupError) as error:
        build_config({"batch_sise": 3})
    assert "batch_sise" in str(error.value) and "batch_size" in str(error.value)


@pytest.mark.parametrize(
    "values", [{"batch_size": "big"}, {"minutes": -1}, {"precision": "fp8"}, {"seed": 1.5}]
)
def test_wrong_types_and_values_are_refused(values):
    with pytest.raises(SelfsupError):
        build_config(values)


def test_recipe_that_is_not_a_mapping(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- a\n- b\n")
    with pytest.raises(SelfsupError, match="mapping"):
        resolve_config(recipe, {})


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"lr": float("nan")}, "'lr'"),  # NaN passed every range check, then trained to NaN
        ({"minutes": float("inf")}, "'minutes'"),
        ({"lr": 10**400}, "'lr'"),  # was an OverflowError
        ({"seed": -1}, "seed"),  # numpy refuses negative seeds, Lightning ignores big ones
        ({"seed": 2**32}, "seed"),
        ({"num_workers": -1}, "num_workers"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"adam_beta2": 1.0}, "adam_beta2"),  # no second-moment average: Adam divides by 0
        ({"checkpoint_steps": 0}, "checkpoint_steps"),
        ({"batch-size": 8, "batch_size": 16}, "given twice"),
    ],
)
def test_values_that_used_to_fail_later_are_refused_naming_the_key(values, named):
    with pytest.raises(SelfsupError, match=named):
        build_config(values)


def test_a_mapping_is_required():
    with pytest.raises(SelfsupError, match="mapping"):
        build_config(["steps", 3])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "named", "listed"),
    [
        ({"method_options": {"temprature": 0.1}}, "temprature", ["temperature", "projection_dim"]),
        ({"method_options": {"temperature": "warm"}}, "'temperature'", []),
        ({"augment_options": {"flip": 0.5}}, "flip", ["flip_p", "crop_scale"]),
        ({"augment_options": {"flip_p": 2}}, "flip_p", []),
        ({"encoder_options": {"widht": 8}}, "widht", ["width", "depths"]),
        ({"encoder": "resnet18", "encoder_options": {"depths": [1, 1]}}, "depths", ["width"]),
    ],
)
def test_nested_option_errors_name_the_option_and_list_the_valid_ones(
    tmp_path, options, named, listed
):
    # The data path does not exist: the options are checked before any data is read.
    with pytest.raises(SelfsupError) as error:
        selfsup.pretrain("simclr", str(tmp_path / "nothing-here"), out=str(tmp_path / "run"),
                         steps=1, progress=False, **options)
    message = str(error.value)
    assert named in message and all(name in message for name in listed), message
    assert "nothing-here" not in message and not (tmp_path / "run").exists()


def test_encoder_option_values_the_encoder_rejects_list_the_valid_options(tmp_path):
    with pytest.raises(SelfsupError, match=r"width=-1|negative.*valid options: depths, width"):
        selfsup.pretrain("simclr", "digits", out=str(tmp_path / "run"), steps=1, progress=False,
                         encoder_options={"width": -1})


def test_auto_precision_resolves_to_what_this_machine_computes_natively():
    from selfsup.config import native_bf16

    config = build_config({})
    assert config.precision == ("bf16" if native_bf16() else "32")
    assert build_config({"precision": "32"}).precision == "32"


def test_method_config_defaults_sit_under_the_users_options():
    defaults = {"batch_size": 32, "lr": 3e-3}
    config = resolve_config(None, {"lr": 1e-3, "batch_size": None}, defaults=defaults)
    assert config.batch_size == 32 and config.lr == 1e-3


def test_yaml_numbers_are_read_as_users_write_them(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as a string; the hand-written validator refused it.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1e-3\nweight_decay: 5e-5\nsteps: 10\n")
    config = resolve_config(recipe, {})
    assert config.lr == 1e-3 and config.weight_decay == 5e-5 and config.steps == 10
    for bad in ("steps: yes\n", "lr: fast\n", "steps: 2.5\n"):
        recipe.write_text(bad)
        with pytest.raises(SelfsupError, match="is not a valid"):
            resolve_config(recipe, {})
