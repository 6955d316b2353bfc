"""Typed stage configs: recipes, overrides, unknown keys, and every shipped recipe validates."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import embedforge
from embedforge.config import (
    RECIPES_DIR,
    ConfigError,
    EvalConfig,
    FinetuneConfig,
    config_hash,
    default_recipe,
    load_config,
    parse_overrides,
)

ROOT = Path(__file__).parents[1]
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


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


def test_a_wrong_value_names_its_source_stage_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: finetune\.learning_rate: .*number.* got 'fast'$"):
        load_config("finetune", None, ["learning_rate=fast"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("eval:\n  ks: [1, five]\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: eval\.ks\[1\]: .*integer.* got 'five'$"):
        load_config("eval", recipe)
    with pytest.raises(ConfigError, match=r"serve\.precision: .*'fp32'.*'int8'.* got 'int4'"):
        load_config("serve", None, ["precision=int4"])
    assert load_config("finetune", None, ["bf16=null", "max_steps=3"]).max_steps == 3


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


def test_recipes_are_package_data_and_the_top_level_folder_is_the_same_files():
    assert RECIPES_DIR == Path(embedforge.__file__).parent / "recipes"
    assert sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")) == [r.name for r in RECIPES]
    assert all((ROOT / "recipes" / r.name).resolve() == r.resolve() for r in RECIPES)


@pytest.mark.slow
def test_the_wheel_ships_every_recipe(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path, ROOT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("embedforge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"embedforge/recipes/{r.name}" for r in RECIPES} <= names


def test_the_default_recipe_fits_the_hardware():
    assert default_recipe(cuda=False) == RECIPES_DIR / "minilm_cpu.yaml"
    assert default_recipe(cuda=True) == RECIPES_DIR / "llama_nemotron_embed_1b_v2.yaml"
    cpu = load_config("finetune", default_recipe(cuda=False))
    assert cpu.base_model == "minilm" and cpu.max_seq_length < 512  # not NVIDIA's 512-token GPU settings
    assert load_config("sdg", default_recipe(cuda=False)).max_passages > 0  # a bounded question budget


def test_a_shipped_recipe_can_be_named_without_its_path():
    assert load_config("finetune", "minilm_cpu") == load_config("finetune", RECIPES_DIR / "minilm_cpu.yaml")
    with pytest.raises(ConfigError, match="no-such-recipe"):
        load_config("finetune", "no-such-recipe")
