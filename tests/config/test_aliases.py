"""Config errors know the peers' flag names and the other sections: `network_dim` → network.rank, not block_dims."""

from pathlib import Path

import pytest

from loraforge.config import ConfigError, load_config
from loraforge.config.aliases import ALIASES
from loraforge.config.import_docs import render_import_docs
from loraforge.config.root import SECTIONS

ROOT = Path(__file__).resolve().parents[2]

# (section, key as users write it, what the hint must say, what it must not say)
CASES = [
    ("network", "network_dim", "did you mean 'rank'? (kohya's --network_dim; kohya's default is 4", "block_dims"),
    ("network", "network_alpha", "did you mean 'alpha'? (kohya's --network_alpha; kohya's default is 1", "block_alphas"),
    ("training", "checkpointing_steps", "did you mean 'save_every_n_steps'? (diffusers' --checkpointing_steps",
     "gradient_checkpointing"),
    ("sampling", "validation_epochs", "did you mean 'sample_every_n_epochs'? (diffusers' --validation_epochs",
     "validation_prompts"),
    ("training", "learning_rate", "it lives in [optimizer]: optimizer.learning_rate", "docs/config.md"),
    ("training", "flip_aug", "it lives in [dataset]: dataset.random_flip (kohya's --flip_aug", "docs/config.md"),
    ("dataset", "flip_aug", "did you mean 'random_flip'? (kohya's --flip_aug", "docs/config.md"),
    ("training", "report_to", "it lives in [output]: output.log_with (diffusers' --report_to; 'tensorboard', "
                              "'wandb'", "docs/config.md"),
    ("model", "lowram", "kohya's --lowram needs no option in loraforge: kohya's --lowram loads the model straight "
                        "onto the GPU", "docs/config.md"),
    ("model", "sdpa", "it lives in [training]: training.attention (kohya's --sdpa", "docs/config.md"),
    ("model", "xformers", "it lives in [training]: training.attention (kohya's --xformers", "docs/config.md"),
    ("optimizer", "max_train_epochs", "it lives in [training]: training.num_train_epochs (kohya's --max_train_epochs",
     "docs/config.md"),
    ("network", "network_args", "kohya's --network_args holds other options: write each key=value as its own key",
     "docs/config.md"),
    ("network", "batch_size", "it lives in [training]: training.batch_size", "docs/config.md"),  # not a peer's name
    # a name loraforge shares with the peers points at loraforge's key, without the peers' notes
    ("training", "output_dir", "it lives in [output]: output.output_dir", "kohya"),
    ("training", "learning_rat", "it lives in [optimizer]: optimizer.learning_rate", "docs/config.md"),  # a typo
]


@pytest.mark.parametrize("section, key, hint, not_hint", CASES, ids=[f"{c[0]}.{c[1]}" for c in CASES])
def test_hint_in_a_toml_file(tmp_path, section, key, hint, not_hint):
    path = tmp_path / "run.toml"
    path.write_text(f"[{section}]\n{key} = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert f"run.toml: unknown key '{key}' in [{section}]; {hint}" in message
    assert not_hint not in message


@pytest.mark.parametrize("section, key, hint, not_hint", CASES, ids=[f"{c[0]}.{c[1]}" for c in CASES])
def test_hint_in_a_set_override(section, key, hint, not_hint):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{section}.{key}=1"])
    message = str(e.value)
    assert f"--set {section}.{key}: unknown key '{key}' in [{section}]; {hint}" in message
    assert not_hint not in message


def test_key_outside_any_section(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("network_dim = 8\nlearning_rate = 1e-4\n[network]\nrank = 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "unknown top-level key 'network_dim'; it lives in [network]: network.rank (kohya's --network_dim" in message
    assert "unknown top-level key 'learning_rate'; it lives in [optimizer]: optimizer.learning_rate" in message
    assert "unknown section" not in message  # a value is not a section


def test_set_without_section_names_the_home():
    with pytest.raises(ConfigError, match=r"--set 'network_dim=8': the key needs its section; it lives in "
                                          r"\[network\]: network\.rank"):
        load_config(None, ["network_dim=8"])
    with pytest.raises(ConfigError, match="the key needs its section, e.g. network.rank=16"):
        load_config(None, ["nothing_like_it=8"])


def test_hint_inside_a_subset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[[dataset.subsets]]\nimage_dir = "a"\nflip_aug = true\nresolution = 512\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "unknown key 'flip_aug' in [dataset.subsets.0]; did you mean 'random_flip'? (kohya's --flip_aug" in message
    assert "unknown key 'resolution' in [dataset.subsets.0]; it lives in [dataset]: dataset.resolution" in message


def test_a_section_typo_still_suggests_the_section(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[trainng]\nseed = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[trainng\]; did you mean \[training\]"):
        load_config(path)


@pytest.mark.parametrize("written, expected", [("AdamW", "adamw"), ("Prodigy", "prodigy"), ("AdamW8bit", "adamw8bit"),
                                               ("adamW", "adamw")])
def test_optimizer_type_in_any_case(tmp_path, written, expected):
    path = tmp_path / "run.toml"
    path.write_text(f'[optimizer]\ntype = "{written}"\n')
    assert load_config(path).optimizer.type == expected
    assert load_config(None, [f"optimizer.type={written}"]).optimizer.type == expected


def test_other_choices_in_any_case_and_on_assignment():
    cfg = load_config(None, ["network.algo=LoCon", "training.mixed_precision=BF16", "optimizer.lr_scheduler=Cosine"])
    assert (cfg.network.algo, cfg.training.mixed_precision, cfg.optimizer.lr_scheduler) == ("locon", "bf16", "cosine")
    cfg.optimizer.type = "Prodigy"
    assert cfg.optimizer.type == "prodigy"
    with pytest.raises(ConfigError, match="optimizer.type = 'Lion'"):
        load_config(None, ["optimizer.type=Lion"])


def test_every_alias_points_at_a_real_key():
    kinds = {"same", "differs", "builtin", "none", "expands"}
    for alias in ALIASES:
        assert alias.kind in kinds, alias
        if alias.key is None:
            assert alias.kind in ("builtin", "none", "expands") and alias.note, f"{alias.flag}: say why there is no key"
        else:
            section, _, key = alias.key.partition(".")
            assert key in SECTIONS[section].model_fields, f"{alias.flag} -> {alias.key} is not a loraforge key"
        if alias.kind == "differs":
            assert alias.note, f"{alias.flag}: say how the meaning differs"


def test_every_seed_flag_has_an_entry():
    """Each flag of the seed command lines (seed-practices.md §16, kept in tests/config/import_cases) is in the table."""
    import re

    names = {a.flag for a in ALIASES}
    for case in (Path(__file__).parent / "import_cases").glob("*.sh"):
        for flag in re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", case.read_text()):
            assert flag in names, f"{case.name}: --{flag} has no entry in config/aliases.py"


def test_docs_import_md_is_current():
    """docs/import.md is generated from the alias table: regenerate it with `make docs` when this fails."""
    assert (ROOT / "docs" / "import.md").read_text() == render_import_docs()
    text = render_import_docs()
    for alias in ALIASES:
        assert f"`{alias.flag}`" in text or f"`--{alias.flag}`" in text
