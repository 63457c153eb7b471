"""The code-written full-size configs: equal to what diffusers derives from the original yaml files, loadable as a
config-only diffusers folder, and of the known parameter counts."""

from __future__ import annotations

import json

import pytest

from loraforge.models import configs
from loraforge.families import full_size_config
from loraforge.models.configs import config_folder, write_config_folder

# The `model.params` of the original yaml files (CompVis v1-inference.yaml, Stability v2-inference-v.yaml,
# generative-models sd_xl_base.yaml), reduced to what diffusers' config converters read.
_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
             "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
ORIGINAL_YAML = {
    "sd15": {"scale_factor": 0.18215, "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": _DDCONFIG}},
             "unet_config": {"params": {
                 "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                 "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                 "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768,
                 "legacy": False}}},
    "sd2": {"parameterization": "v", "scale_factor": 0.18215,
            "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": _DDCONFIG}},
            "unet_config": {"params": {
                "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                "num_head_channels": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
                "transformer_depth": 1, "context_dim": 1024, "legacy": False}}},
    "sdxl": {"scale_factor": 0.13025, "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": _DDCONFIG}},
             "network_config": {"params": {
                 "adm_in_channels": 2816, "num_classes": "sequential", "in_channels": 4, "out_channels": 4,
                 "model_channels": 320, "attention_resolutions": [4, 2], "num_res_blocks": 2,
                 "channel_mult": [1, 2, 4], "num_head_channels": 64, "use_linear_in_transformer": True,
                 "transformer_depth": [1, 2, 10], "context_dim": 2048}}},
}

PARAMS = {  # offline.md section 3; SD 2.x UNet and the 23-layer OpenCLIP-H text tower computed here
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


# Probe keys of diffusers' `infer_diffusers_model_type` (it picks the image size, hence sample_size).
_PROBES = {
    "sd15": {"model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1)},
    "sd2": {"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)},
    "sdxl": {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)},
}


def _meta(cls, config):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return cls(config) if not hasattr(cls, "from_config") else cls.from_config(config)


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_unet_and_vae_match_diffusers_yaml_conversion(family):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    original = {"model": {"params": ORIGINAL_YAML[family]}}
    probe = {k: torch.empty(shape, device="meta") for k, shape in _PROBES[family].items()}
    for component, create, cls in (
        ("unet", create_unet_diffusers_config_from_ldm, UNet2DConditionModel),
        ("vae", create_vae_diffusers_config_from_ldm, AutoencoderKL),
    ):
        derived = create(original, probe)
        ours_model, derived_model = _meta(cls, full_size_config(family, component)), _meta(cls, derived)
        for key in derived:  # compared as effective configs: a key we leave out takes the class default
            mine, theirs = ours_model.config[key], derived_model.config[key]
            norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
            assert norm(mine) == norm(theirs), f"{family} {component}.{key}: ours {mine!r}, from yaml {theirs!r}"
        a = {k: tuple(v.shape) for k, v in ours_model.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in derived_model.state_dict().items()}
        assert a == b


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_parameter_counts_on_meta(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    counts = {
        "unet": _meta(UNet2DConditionModel, full_size_config(family, "unet")),
        "vae": _meta(AutoencoderKL, full_size_config(family, "vae")),
    }
    te_classes = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
    for name in PARAMS[family]:
        if name.startswith("text_encoder"):
            counts[name] = _meta(te_classes[name], CLIPTextConfig.from_dict(full_size_config(family, name)))
    got = {name: sum(p.numel() for p in model.parameters()) for name, model in counts.items()}
    assert got == PARAMS[family]


def test_full_size_config_is_a_copy_and_checks_names():
    cfg = full_size_config("sdxl", "unet")
    cfg["block_out_channels"].append(1)
    assert full_size_config("sdxl", "unet")["block_out_channels"] == [320, 640, 1280]
    with pytest.raises(ValueError, match="unknown family"):
        full_size_config("sd3", "unet")
    with pytest.raises(ValueError, match="no component"):
        full_size_config("sd15", "text_encoder_2")


@pytest.fixture(scope="module")
def ldm_config_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm-configs")
    return {family: write_config_folder(family, root / family) for family in ("sd15", "sd2", "sdxl")}


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_config_folder_loads_with_diffusers(ldm_config_folders, family):
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    folder = ldm_config_folders[family]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    pipeline_cls = getattr(diffusers, index["_class_name"])
    assert pipeline_cls.load_config(str(folder))["_class_name"] == index["_class_name"]

    assert dict(UNet2DConditionModel.load_config(str(folder), subfolder="unet")) == {
        **full_size_config(family, "unet")
    }
    assert AutoencoderKL.load_config(str(folder), subfolder="vae")["scaling_factor"] == (
        0.13025 if family == "sdxl" else 0.18215
    )
    scheduler_cls = getattr(diffusers, index["scheduler"][1])
    scheduler = scheduler_cls.from_pretrained(str(folder), subfolder="scheduler")
    assert scheduler.config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")

    te = CLIPTextConfig.from_pretrained(str(folder), subfolder="text_encoder")
    assert (te.hidden_size, te.num_hidden_layers, te.hidden_act) == {
        "sd15": (768, 12, "quick_gelu"), "sd2": (1024, 23, "gelu"), "sdxl": (768, 12, "quick_gelu")}[family]
    tok = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    assert tok.pad_token == ("!" if family == "sd2" else "<|endoftext|>")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    if family == "sdxl":
        te2 = CLIPTextConfig.from_pretrained(str(folder), subfolder="text_encoder_2")
        assert (te2.hidden_size, te2.num_hidden_layers, te2.projection_dim) == (1280, 32, 1280)
        assert CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer_2").pad_token_id == 0
    assert not list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))


def test_config_folder_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path))
    folder = config_folder("sd15")
    assert folder == tmp_path / "configs" / f"sd15-v{configs.CONFIG_VERSION}"
    assert (folder / "unet" / "config.json").is_file()
    assert [p.name for p in (tmp_path / "configs").iterdir()] == [folder.name]  # no temporary folder left

    def fail(*args, **kwargs):
        raise AssertionError("rewritten")

    monkeypatch.setattr(configs, "write_config_folder", fail)
    assert config_folder("sd15") == folder


def test_flux_config_folder_holds_clip_s_tokenizer_only(tmp_path):
    """FLUX's tokenizer_2 is T5's SentencePiece tokenizer, which loraforge does not ship: the config folder must not
    hold a CLIP tokenizer under that name (a reader would take it for T5's)."""
    folder = configs.write_config_folder("flux", tmp_path / "flux")
    assert (folder / "tokenizer" / "tokenizer.json").is_file() and not (folder / "tokenizer_2").exists()
    assert (folder / "text_encoder_2" / "config.json").is_file()
