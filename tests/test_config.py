"""The run configuration: the original design's YAML shape, overrides, and clear errors."""

from pathlib import Path

import pytest

from prune_engine.config import ConfigError, load_config
from prune_engine.presets import bge_m3_config
from prune_engine.sources import read_encoder_config
from prune_engine.targets import ArchitectureTarget, ParameterBudget

ROOT = Path(__file__).resolve().parents[1]

ORIGINAL_SHAPE = """
model: BAAI/bge-m3
target_model:
  n_layers: 18
  n_heads: 12
  intermediate_size: 3072
optimizer:
  lr: 2.0e-5
batch_size: 16
max_length: 512
max_duration: "1000ba"
precision: amp_bf16
"""


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_original_design_yaml_shape_loads(tmp_path):
    config = load_config(write(tmp_path, ORIGINAL_SHAPE))
    assert config.target_model.n_layers == 18 and config.optimizer.lr == 2e-5
    assert config.duration() == (1000, "ba")
    assert config.size_target(bge_m3_config()) == ArchitectureTarget(18, 12, 3072)


def test_overrides_replace_any_key_and_the_target_kind(tmp_path):
    config = load_config(
        write(tmp_path, ORIGINAL_SHAPE),
        ["optimizer.lr=1e-4", "batch_size=8", "max_duration=2ep", "target_params.fraction=0.5", "dataset=mteb/scifact"],
    )
    assert config.optimizer.lr == 1e-4 and config.batch_size == 8 and config.duration() == (2, "ep")
    assert config.target_model is None and config.dataset == "mteb/scifact"
    budget = config.size_target(bge_m3_config())
    assert isinstance(budget, ParameterBudget) and budget.parameters == 302_309_376 // 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("batch_sise=4", "unknown key batch_sise; valid keys: model, documents"),
        ("optimizer.learning_rate=1", "unknown key optimizer.learning_rate; valid keys: optimizer.lr"),
        ("batch_size=many", "batch_size: expected int, got 'many'"),
        ("precision=fp8", "precision must be one of ('fp32', 'amp_bf16', 'amp_fp16')"),
        ("max_duration=10 steps", "max_duration must look like '1000ba' (batches) or '2ep' (epochs)"),
        ("target_model.n_heads=twelve", "target_model.n_heads: expected int"),
        ("structures=[layers, neurons]", "structures: unknown ['neurons']"),
        ("distill_dataset=passages.jsonl", "renamed key: distill_dataset is now documents"),
        # Numbers out of their range are refused where the config is built, with the key and the range.
        ("optimizer.lr=-1e-4", "optimizer.lr must be in (0.0, inf), got -0.0001"),
        ("optimizer.lr=0", "optimizer.lr must be in (0.0, inf), got 0.0"),
        ("optimizer.lr=.nan", "optimizer.lr must be in (0.0, inf), got nan"),
        ("optimizer.gate_lr=.inf", "optimizer.gate_lr must be in (0.0, inf), got inf"),
        ("optimizer.lagrangian_lr=-0.5", "optimizer.lagrangian_lr must be in (0.0, inf)"),
        ("optimizer.weight_decay=-0.01", "optimizer.weight_decay must be in [0.0, inf)"),
        ("optimizer.warmup_fraction=1.5", "optimizer.warmup_fraction must be in [0.0, 1.0]"),
        ("optimizer.max_grad_norm=-1", "optimizer.max_grad_norm must be in [0.0, inf)"),
        ("loss.temperature=0", "loss.temperature must be in (0.0, inf)"),
        ("loss.task=-1", "loss.task must be in [0.0, inf)"),
        ("documents_distractors=-1", "documents_distractors must be in [0.0, inf)"),
        ("batch_size=0", "batch_size must be in [2, inf), got 0"),
        ("batch_size=1", "batch_size must be in [2, inf), got 1"),
        ("max_train_examples=0", "max_train_examples must be in [2, inf)"),
        ("documents_per_batch=0", "documents_per_batch must be in [1, inf)"),
        ("documents_held_out=0.9", "documents_held_out must be in (0.0, 0.5]"),
        ("eval_splits=[test, holdout]", "eval_splits: unknown ['holdout']"),
        ("target_model.n_heads=0", "target_model.n_heads must be in [1, inf), got 0"),
        ("target_model.n_layers=-2", "target_model.n_layers must be in [1, inf)"),
        ("target_params.count=-5", "target_params.count must be at least 1"),
        ("mask_fraction=0", "mask_fraction must be in (0.0, 1.0]"),
        ("teacher_cache_mb=-1", "teacher_cache_mb must be in [0.0, inf)"),
    ],
)
def test_bad_values_name_the_key_and_the_choices(tmp_path, override, expected):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, ORIGINAL_SHAPE), [override])
    assert expected in str(error.value)


def test_documents_or_a_dataset_is_required(tmp_path):
    with pytest.raises(ConfigError, match="give documents .* or a dataset"):
        load_config(write(tmp_path, ORIGINAL_SHAPE), ["dataset=null"])
    assert load_config(write(tmp_path, ORIGINAL_SHAPE), ["dataset=null", "documents=corpus.jsonl"]).dataset is None


def test_the_default_recipe_is_distillation_first_on_heads_and_neurons():
    config = load_config(None, ["target_params.fraction=0.5"])
    assert (config.loss.task, config.loss.distill_tokens, config.structures) == (0.03, 1.0, ["heads", "ffn"])
    assert config.mask_fraction == 0.5 and config.max_length is None and config.documents is None


def test_exactly_one_target_is_required(tmp_path):
    with pytest.raises(ConfigError, match="give exactly one target"):
        load_config(write(tmp_path, "model: minilm\n"))
    with pytest.raises(ConfigError, match="exactly one of 'fraction'"):
        load_config(write(tmp_path, "target_params: {of: encoder}\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "target_model: [unclosed\n"))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    config = load_config(ROOT / "configs" / name)
    model_config = bge_m3_config() if config.model == "BAAI/bge-m3" else read_encoder_config(config.model)
    config.size_target(model_config).validate(model_config, tuple(config.structures))
