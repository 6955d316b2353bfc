"""Typed stage configs: recipes, overrides, unknown keys, and every shipped recipe validates."""

from pathlib import Path

import pytest

from embedforge.config import (
    ConfigError,
    EvalConfig,
    FinetuneConfig,
    config_hash,
    load_config,
    parse_overrides,
)

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_defaults_match_nvidia_recipe():
    cfg = FinetuneConfig()
    assert (cfg.learning_rate, cfg.temperature, cfg.n_passages, cfg.global_batch_size) == (1e-5, 0.02, 5, 128)
    assert (cfg.warmup_steps, cfg.weight_decay, cfg.epochs, cfg.lora_rank, cfg.lora_alpha) == (
        5,
        0.01,
        3,
        16,
        32,
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_loads_and_opens_with_its_command(recipe):
    assert recipe.read_text().startswith("# embedforge ")
    assert isinstance(load_config("finetune", recipe), FinetuneConfig)
    assert isinstance(load_config("eval", recipe), EvalConfig)


def test_at_least_the_cpu_default_and_nvidia_recipes_ship():
    names = {r.name for r in RECIPES}
    assert {"minilm_cpu.yaml", "llama_nemotron_embed_1b_v2.yaml"} <= names


def test_overrides_win_and_are_typed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune:\n  learning_rate: 2.0e-5\n  epochs: 2\n")
    cfg = load_config(
        "finetune",
        recipe,
        ["epochs=1", "finetune.n_passages=3", "eval.split=dev", "matryoshka_dims=[64,128]"],
    )
    assert cfg.learning_rate == 2e-5 and cfg.epochs == 1.0 and cfg.n_passages == 3
    assert cfg.matryoshka_dims == [64, 128]
    assert load_config("eval", recipe, ["eval.split=dev", "dims=64,128"]).dims == [64, 128]


def test_unknown_key_names_the_file_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("finetune:\n  learning_rat: 1e-5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*learning_rat"):
        load_config("finetune", recipe)
    recipe.write_text("fine_tune: {}\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config("finetune", recipe)
    with pytest.raises(ConfigError, match="learning_rat"):
        load_config("finetune", None, ["learning_rat=3"])


def test_wrong_types_and_choices_are_rejected():
    with pytest.raises(ConfigError, match="epochs"):
        load_config("finetune", None, ["epochs=many"])
    with pytest.raises(ConfigError, match="finetuning_type.*lora_merged"):
        load_config("finetune", None, ["finetuning_type=lora"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(FinetuneConfig()) == config_hash(FinetuneConfig())
    assert config_hash(FinetuneConfig()) != config_hash(FinetuneConfig(epochs=1))
