"""The config: typed, validated, every user error names the file, the key and the fix."""

import subprocess
import sys
from pathlib import Path

import pytest

from loraforge.config import ConfigError, dump_config, load_config, parse_override
from loraforge.config.docs import render_config_docs

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_defaults_and_sections(tmp_path):
    cfg = load_config(write(tmp_path, "[network]\nrank = 32\n[training]\nmax_train_steps = 200\n"))
    assert cfg.network.rank == 32 and cfg.training.max_train_steps == 200
    assert cfg.optimizer.type == "adamw" and cfg.model.pretrained_model_name_or_path is None


def test_unknown_key_names_section_and_closest_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[network]\nrnak = 8\n"))
    msg = str(e.value)
    assert "run.toml" in msg and "unknown key 'rnak' in [network]" in msg and "did you mean 'rank'" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[trainng\]; did you mean \[training\]"):
        load_config(write(tmp_path, "[trainng]\nseed = 1\n"))


def test_wrong_type_and_range_name_field_value_and_allowed(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, '[training]\nmax_train_steps = -5\nbatch_size = "four"\n[network]\ndropout = 1.5\n'))
    problems = e.value.problems
    assert len(problems) == 3
    text = "\n".join(problems)
    assert "training.max_train_steps = -5" in text and "an integer >= 1" in text
    assert "training.batch_size = 'four'" in text
    assert "network.dropout = 1.5" in text and "< 1.0" in text


def test_literal_choices_listed(tmp_path):
    with pytest.raises(ConfigError, match="'fp32', 'fp16' or 'bf16'"):
        load_config(None, ["output.save_precision=fp8"])


def test_overrides_parse_toml_values_and_bare_words():
    assert parse_override("training.max_train_steps=200") == (["training", "max_train_steps"], 200)
    assert parse_override("model.family=sdxl") == (["model", "family"], "sdxl")
    assert parse_override('sampling.validation_prompts=["a", "b"]')[1] == ["a", "b"]
    cfg = load_config(None, ["network.rank=16", "network.train_text_encoder=true", "optimizer.learning_rate=3e-4"])
    assert cfg.network.rank == 16 and cfg.network.train_text_encoder is True and cfg.optimizer.learning_rate == 3e-4


def test_override_errors_point_at_the_override():
    with pytest.raises(ConfigError, match=r"--set network.rnak: unknown key"):
        load_config(None, ["network.rnak=4"])
    with pytest.raises(ConfigError, match="needs its section"):
        load_config(None, ["rank=4"])


def test_cross_field_resolution_multiple_of_8():
    with pytest.raises(ConfigError, match="not a multiple of 8.*try 96"):
        load_config(None, ["dataset.resolution=100"])


def test_resolution_is_one_size_or_width_and_height(tmp_path):
    cfg = load_config(write(tmp_path, "[dataset]\nresolution = [64, 96]\n"))
    assert cfg.dataset.resolution == [64, 96] and cfg.dataset.size == (64, 96)  # (width, height)
    assert load_config(None, ["dataset.resolution='96,64'"]).dataset.size == (96, 64)  # kohya's "W,H"
    assert load_config(None, ["dataset.resolution=64"]).dataset.size == (64, 64)
    assert load_config(None, []).dataset.size is None  # the family's native square, decided with the model
    again = tmp_path / "again.toml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


@pytest.mark.parametrize("value, fix", [
    ("[64, 100]", "100 is not a multiple of 8; the VAE needs one (try 96)"),
    ("[32, 64]", "a side of 32 px is too small; use sides >= 64"),
    ("[64, 96, 128]", "[width, height]"),
    ("'big'", "[width, height]"),
])
def test_resolution_refuses_bad_sides_naming_the_field_and_fix(value, fix):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"dataset.resolution={value}"])
    assert "--set dataset.resolution: dataset.resolution = " in str(err.value) and fix in str(err.value)


def test_bad_toml_reports_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"run.toml: not valid TOML.*line 2"):
        load_config(write(tmp_path, "[training]\nseed = = 3\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/run.toml")


def test_cli_reports_config_errors_without_traceback(tmp_path):
    cfg = write(tmp_path, "[network]\nrnak = 8\n")
    proc = subprocess.run([sys.executable, "-m", "loraforge", "train", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "did you mean 'rank'" in proc.stderr and "Traceback" not in proc.stderr


def test_docs_config_md_is_current():
    """docs/config.md is generated from the schema: regenerate with `make docs` when this fails."""
    assert (ROOT / "docs" / "config.md").read_text() == render_config_docs()


def test_docs_cover_every_option():
    text = render_config_docs()
    from loraforge.config.network import NETWORK_CLASSES
    from loraforge.config.root import SECTIONS, TrainConfig

    assert "## `preset` (top level)" in text
    assert SECTIONS.keys() == TrainConfig.model_fields.keys() - {"preset"}
    network_keys = {k for cls in NETWORK_CLASSES.values() for k in cls.model_fields}
    assert network_keys == SECTIONS["network"].model_fields.keys()  # every algo's options are listed
    for section, model in SECTIONS.items():
        assert f"## `[{section}]`" in text
        for key in model.model_fields:
            assert f"| `{key}` |" in text, f"{section}.{key} missing from the docs"


def test_sdxl_block_dims_with_25_values_say_where_25_comes_from():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.family='sdxl'", "network.block_dims=" + str([4] * 25)])
    text = str(e.value)
    assert "has 25 values but the model is sdxl" in text and "takes 23" in text
    assert "25 values are the SD 1.x layout" in text and "loraforge import` turn 25 equal values into 23" in text
    with pytest.raises(ConfigError) as e:  # other counts get no such hint
        load_config(None, ["model.family='sdxl'", "network.block_dims=" + str([4] * 24)])
    assert "SD 1.x layout" not in str(e.value)
