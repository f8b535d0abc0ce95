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
        ("batch_sise=4", "unknown key batch_sise; valid keys: model, dataset"),
        ("optimizer.learning_rate=1", "unknown key optimizer.learning_rate; valid keys: optimizer.lr"),
        ("batch_size=many", "batch_size: expected int, got 'many'"),
        ("precision=fp8", "precision must be one of ('fp32', 'amp_bf16', 'amp_fp16')"),
        ("max_duration=10 steps", "max_duration must look like '1000ba' (batches) or '2ep' (epochs)"),
        ("target_model.n_heads=twelve", "target_model.n_heads: expected int"),
        ("structures=[layers, neurons]", "structures: unknown ['neurons']"),
    ],
)
def test_bad_values_name_the_key_and_the_choices(tmp_path, override, expected):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, ORIGINAL_SHAPE), [override])
    assert expected in str(error.value)


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
