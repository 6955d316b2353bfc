"""The pre-flight memory check of a CPU fine-tune: calibrated estimates, and a refusal that names the fix."""

import re

import pytest

from domain_fixture import make_domain_fixture
from embedforge.config import ConfigError, FinetuneConfig
from embedforge.finetune import train_memory
from embedforge.finetune.train_memory import check_fits, step_bytes
from embedforge.finetune.trainer import finetune

GIB = 2**30
MINILM = dict(hidden=384, layers=6, parameters=22_713_216)
MPNET = dict(hidden=768, layers=12, parameters=109_486_464)
RECIPE = dict(forward_batch=64, n_passages=2, max_seq_length=256)  # the CPU recipe's step on perlfaq


@pytest.mark.parametrize(
    "measured_gb, step",
    [
        (7.2, RECIPE),  # perlfaq, 1 negative
        (10.1, {**RECIPE, "n_passages": 3}),  # perlfaq, 2 negatives
        # the SQLite + git docs: dense HTML fills every passage's 384 tokens; 16 anchor texts a step
        (21.4, dict(forward_batch=128, n_passages=2, max_seq_length=384, extra_texts=16)),
    ],
)
def test_an_estimate_is_never_under_a_measured_peak_and_at_most_a_tenth_over(measured_gb, step):
    # peaks measured on this project's CPU runs (resident set of the training process)
    assert measured_gb <= step_bytes(**MINILM, **step) / 1e9 <= 1.1 * measured_gb


def test_the_anchor_texts_count_and_mpnet_is_over_what_killed_it():
    with_anchors = dict(forward_batch=128, n_passages=2, max_seq_length=384, extra_texts=16)
    assert step_bytes(**MINILM, **with_anchors) > step_bytes(**MINILM, **{**with_anchors, "extra_texts": 0})
    assert step_bytes(**MPNET, **RECIPE) > 24.4e9  # killed by the OOM killer at 24.4 GB resident


def test_a_step_that_does_not_fit_is_refused_with_a_micro_batch_that_does():
    available = 23 * GIB
    assert check_fits(model_name="minilm", **MINILM, **RECIPE, available=available) == step_bytes(
        **MINILM, **RECIPE
    )
    with pytest.raises(ConfigError, match="mpnet at 64 queries per forward pass") as refused:
        check_fits(model_name="mpnet", **MPNET, **RECIPE, available=available)
    fits = int(re.search(r"cached_loss=true micro_batch_size=(\d+)", str(refused.value)).group(1))
    assert fits in (16, 32)  # halved until the step takes at most 80% of what is available
    assert step_bytes(**MPNET, **{**RECIPE, "forward_batch": fits}) <= 0.8 * available
    assert step_bytes(**MPNET, **{**RECIPE, "forward_batch": fits * 2}) > 0.8 * available
    assert check_fits(model_name="mpnet", **MPNET, **RECIPE, available=None) > 0  # unknown memory: no check
    tight = int(step_bytes(**MINILM, **RECIPE) / 0.95)  # the step would take 95% of what is free
    with pytest.raises(ConfigError, match="GiB is available"):
        check_fits(model_name="minilm", **MINILM, **RECIPE, available=tight)


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    return make_domain_fixture(tmp_path_factory.mktemp("domain"))


def test_finetune_refuses_before_the_previous_run_is_touched(domain, tmp_path, monkeypatch):
    (tmp_path / "train_log.jsonl").write_text('{"step": 4, "loss": 0.5}\n')
    monkeypatch.setattr(train_memory, "available_bytes", lambda: 256 * 2**20)  # a machine with 256 MiB free
    config = FinetuneConfig(
        train_data=str(domain["train"]), output_dir=str(tmp_path), max_steps=1, n_passages=2
    )
    with pytest.raises(ConfigError, match="GiB is available"):
        finetune(config)
    assert [p.name for p in tmp_path.iterdir()] == ["train_log.jsonl"]
    assert (tmp_path / "train_log.jsonl").read_text() == '{"step": 4, "loss": 0.5}\n'


def test_a_step_too_large_for_the_recipe_runs_as_gradcache_mini_batches(domain, tmp_path, monkeypatch):
    available = int(2.2 * GIB)  # MiniLM's weights and runtime fit, a whole step of 2 passages does not
    monkeypatch.setattr(train_memory, "available_bytes", lambda: available)
    config = FinetuneConfig(
        train_data=str(domain["train"]), output_dir=str(tmp_path), max_steps=1, n_passages=2
    )
    summary = finetune(config)
    plan = summary["plan"]
    assert "GiB is available" in plan["memory_switch"]
    assert summary["config"]["cached_loss"] is True
    assert 1 <= plan["cache_mini_batch_size"] < plan["global_batch_size"]
    assert plan["micro_batch_size"] == plan["global_batch_size"]  # one optimizer step sees every row
    assert summary["config"]["micro_batch_size"] == plan["cache_mini_batch_size"]
    assert summary["steps"] == 1 and summary["train_loss"] > 0
    assert (tmp_path / "model" / "config.json").exists()


def test_a_chosen_batch_setting_is_refused_not_changed(domain, tmp_path, monkeypatch):
    monkeypatch.setattr(train_memory, "available_bytes", lambda: int(2.2 * GIB))
    config = FinetuneConfig(
        train_data=str(domain["train"]), output_dir=str(tmp_path), max_steps=1, n_passages=2, cached_loss=True
    )
    with pytest.raises(ConfigError, match="GiB is available"):
        finetune(config)
