"""`[network]` refuses combinations that cannot work, naming the fields and the fix."""

from __future__ import annotations

import copy

import pytest

from loraforge.config import ConfigError, load_config
from loraforge.errors import NetworkError
from loraforge.networks import create_network


def _load(*overrides):
    return load_config(None, list(overrides))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["network.use_tucker=true"], "network.use_tucker need the LyCORIS engine, not peft: use network.algo = 'locon'"),
        (["network.rank_dropout=0.1", "network.module_dropout=0.1"],
         "network.rank_dropout, network.module_dropout need the LyCORIS engine"),
        (["network.conv_dim=8"], "network.conv_dim set, but algo = 'lora' adapts linear and 1×1 layers only: use "
                                 "network.algo = 'locon'"),
        (["network.algo='locon'", "network.factor=4"], "network.factor are LoKr options; set network.algo = 'lokr'"),
        (["network.algo='lokr'", "network.use_tucker=true"], "ComfyUI 0.19.3 cannot merge a LoKr Tucker core"),
        (["network.algo='lokr'", "network.loraplus_lr_ratio=16"], "LoKr has no up/down pair"),
        (["network.algo='dora'", "network.dropout=0.1"], "use network.rank_dropout or network.module_dropout"),
        (["network.dora_axis='output'"], "network.dora_axis applies to algo = 'dora' only"),
        (["network.algo='loha'", "network.init_lora_weights='gaussian'"], "applies to algo = 'lora' only"),
        (["network.algo='locon'", "network.rank_dropout_scale=true"], "needs network.rank_dropout > 0"),
        (["network.preset='attn-mlp'", "network.target_modules=['to_q']"],
         "network.preset = 'attn-mlp' and network.target_modules both choose modules"),
        (["network.preset='unet-transformer-only'", "network.train_text_encoder=true"],
         "adapts no text-encoder module but train_text_encoder = true"),
        (["network.block_dims=[4, 4, 4]"], "network.block_dims has 3 values; it needs 25 for SD 1.x/2.x"),
        (["network.block_alphas=" + str([1.0] * 25)], "network.block_alphas needs network.block_dims"),
        (["network.block_dims=" + str([4] * 25), "network.block_lr_weights=" + str([1.0] * 23)],
         "must all have the same length"),
        (["model.family='sdxl'", "network.block_dims=" + str([4] * 25)],
         "network.block_dims has 25 values but the model is sdxl: SDXL (emb, IN0-8, MID0-2, OUT0-8, out) takes 23"),
        (["network.block_dims=" + str([4] * 23)], "has 23 values but the model is sd15"),  # the embedded model
    ],
)
def test_bad_combinations_name_fields_and_fix(overrides, message):
    with pytest.raises(ConfigError) as e:
        _load(*overrides)
    assert message in str(e.value), str(e.value)
    assert "accepted: NetworkConfig" not in str(e.value)


def test_good_combinations_load(tiny_models):
    cfg = _load("network.algo='lokr'", "network.factor=8", "network.decompose_both=true", "network.preset='full'",
                "network.train_text_encoder=true").network
    assert cfg.algo == "lokr" and cfg.factor == 8
    cfg = _load("network.algo='dora'", "network.dora_axis='output'", "network.use_tucker=true",
                "network.rank_dropout=0.1", "network.rank_dropout_scale=true").network
    assert cfg.dora_axis == "output"
    cfg = _load("model.family='sdxl'", "model.pretrained_model_name_or_path='x'", "network.block_dims=" + str([4] * 23),
                "network.block_alphas=" + str([2.0] * 23)).network
    assert cfg.block_dims == [4] * 23 and cfg.block_alphas == [2.0] * 23
    # family auto on a model path: the family is unknown until the model is loaded, so the 23 values are kept and
    # the count is checked when the network is built (on an SD 1.x model: refused)
    cfg = _load("model.pretrained_model_name_or_path='x'", "network.block_dims=" + str([4] * 23)).network
    assert cfg.block_dims == [4] * 23
    with pytest.raises(NetworkError, match="network.block_dims has 23 values but the model is sd15: SD 1.x/2.x .* takes 25"):
        create_network(cfg).apply(copy.deepcopy(tiny_models("sd15")))


def test_each_algo_has_its_own_options_class():
    """`[network]` is a union on `algo`: each algo's class has only its options; another algo's option reads as its
    off value (so code reading `cfg.network.<option>` works for every algo), and may be written at that value (the
    TOML users wrote before stays valid)."""
    import typing

    from loraforge.config.network import NETWORK_CLASSES, OFF_VALUES, Algo

    assert set(typing.get_args(Algo)) == set(NETWORK_CLASSES)  # the documented choices are the classes

    lora = _load("network.use_tucker=false", "network.rank_dropout=0", "network.dora_axis='input'",
                 "network.factor=-1").network
    assert type(lora) is NETWORK_CLASSES["lora"] and lora.algo == "lora"
    assert "use_tucker" not in type(lora).model_fields and "factor" not in type(lora).model_fields
    assert (lora.use_tucker, lora.conv_dim, lora.factor, lora.dora_axis) == (False, None, -1, "input")
    lokr = _load("network.algo='LoKr'", "network.factor=4").network  # the algo in any case, as before
    assert type(lokr) is NETWORK_CLASSES["lokr"] and lokr.factor == 4 and lokr.loraplus_lr_ratio is None
    assert "loraplus_lr_ratio" not in type(lokr).model_fields and "dropout" in type(lokr).model_fields
    # every option is some algo's own, and every option that some algo lacks has an off value
    every = {k for cls in NETWORK_CLASSES.values() for k in cls.model_fields}
    some_lack = {k for k in every if any(k not in cls.model_fields for cls in NETWORK_CLASSES.values())}
    assert some_lack == set(OFF_VALUES)
    with pytest.raises(ConfigError, match=r"network.algo = 'lycoris': unknown algo; choose one of 'lora', 'locon'"):
        _load("network.algo='lycoris'")
    with pytest.raises(ConfigError, match="unknown key 'rnak' in \\[network\\]; did you mean 'rank'"):
        _load("network.algo='loha'", "network.rnak=4")


def test_dumped_config_lists_every_network_option_and_loads_back():
    """The resolved config (config.toml of a run and of each checkpoint) lists every [network] option whatever the
    algo, another algo's at its off value, so it reads back and compares with configs stored by earlier versions."""
    import tomllib

    from loraforge.config import dump_config, validate_config
    from loraforge.config.network import NetworkOptions

    for algo in ("lora", "lokr"):
        text = dump_config(_load(f"network.algo='{algo}'"))
        net = tomllib.loads(text)["network"]
        assert set(net) == {k for k, f in NetworkOptions.model_fields.items() if f.default is not None}
        assert net["algo"] == algo and net["use_tucker"] is False and net["factor"] == -1
        assert dump_config(validate_config(tomllib.loads(text))) == text
