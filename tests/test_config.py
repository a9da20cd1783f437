import pytest

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
