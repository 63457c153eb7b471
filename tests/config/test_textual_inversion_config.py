"""Config of textual inversion alone (`network.algo = "none"`), phased pivotal tuning (`training.ti_steps`) and
custom token names (`training.token_names`): what is refused, with the field and the fix."""

import pytest

from loraforge.config import ConfigError, dump_config, load_config
from loraforge.networks import create_network

TI = "training.train_text_encoder_ti=true"


def refused(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, list(overrides))
    return str(e.value)


def test_algo_none_is_textual_inversion_alone():
    cfg = load_config(None, ["network.algo='none'", TI])
    assert cfg.network.algo == "none" and create_network(cfg.network).parts == ()
    assert 'algo = "none"' in dump_config(cfg)
    # a preset's rank and alpha are let through (unused); the options that build a LoRA are refused
    assert load_config(None, ["preset='face'", "network.algo='none'"]).network.rank == 32
    assert "network.algo = 'none' trains no adapter, so nothing would train: set training.train_text_encoder_ti = " \
           "true" in refused("network.algo='none'")
    text = refused("network.algo='none'", TI, "network.train_text_encoder=true", "network.target_modules=['to_q']")
    assert "network.target_modules, network.train_text_encoder set, but network.algo = 'none'" in text
    assert "network.dropout does not apply to algo = 'none'" in refused("network.algo='none'", TI,
                                                                          "network.dropout=0.1")


def test_ti_steps_rules():
    cfg = load_config(None, [TI, "training.ti_steps=3", "network.train_text_encoder=true"])
    assert cfg.training.ti_steps == 3
    assert "training.ti_steps set, but training.train_text_encoder_ti is off" in refused("training.ti_steps=3")
    assert "network.algo = 'none' has no LoRA" in refused(TI, "network.algo='none'", "training.ti_steps=3")
    assert "ti_steps and training.train_text_encoder_ti_frac both say" in refused(
        TI, "training.ti_steps=3", "training.train_text_encoder_ti_frac=0.5")
    assert "training.ti_steps = 10 leaves no step of the 10 (training.max_train_steps) for the LoRA" in refused(
        TI, "training.ti_steps=10", "training.max_train_steps=10")
    assert "train together only in phases: set training.ti_steps" in refused(TI, "network.train_text_encoder=true")


def test_token_names_rules():
    cfg = load_config(None, [TI, "training.token_names=['<krk>', '<s1>', '<s2>']"])
    assert cfg.training.tokens_per_abstraction == 3  # the names decide when the count is not written
    cfg = load_config(None, [TI, "training.token_abstraction='TOK,PET'", "training.token_names=['<a>', '<b>']"])
    assert cfg.training.tokens_per_abstraction == 1
    assert "training.token_names set, but training.train_text_encoder_ti is off" in refused(
        "training.token_names=['<a>']")
    assert "without spaces or commas" in refused(TI, "training.token_names=['<a b>']")
    assert "names a token twice" in refused(TI, "training.token_names=['<a>', '<a>']")
    assert "contain the token abstraction 'TOK'" in refused(TI, "training.token_names=['<TOK>']")
    assert "has 3 names but 1 abstraction(s) × training.num_new_tokens_per_abstraction 2 need 2" in refused(
        TI, "training.token_names=['<a>', '<b>', '<c>']", "training.num_new_tokens_per_abstraction=2")
    assert "has 3 names but 2 abstraction(s)" in refused(
        TI, "training.token_abstraction='TOK,PET'", "training.token_names=['<a>', '<b>', '<c>']")
