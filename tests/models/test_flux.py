"""The embedded tiny FLUX.1 is the real architecture, loads through the one loading path, and our prompt encoding
equals `FluxPipeline.encode_prompt`."""

import json

import pytest
import torch

from loraforge.config import load_config
from loraforge.errors import ConfigError, ModelLoadError
from loraforge.families import family
from loraforge.families.detect import detect_family_from_folder
from loraforge.models.loading import load_model
from loraforge.models.text import encode_prompts, text_ids
from loraforge.models.tiny import tiny_model_dir


@pytest.fixture(scope="module")
def flux():
    return load_model(load_config(None, ["model.family='flux'"]).model)


def test_tiny_flux_is_the_real_architecture(flux):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    assert flux.family is family("flux") and flux.is_tiny and flux.prediction_type == "flow"
    t = flux.unet
    assert isinstance(t, FluxTransformer2DModel)
    assert len(t.transformer_blocks) == 2 and len(t.single_transformer_blocks) == 2  # double and single stream
    assert t.config.guidance_embeds and flux.guidance_embeds  # [dev]
    assert sum(t.config.axes_dims_rope) == t.config.attention_head_dim  # RoPE over (text, row, column)
    assert t.config.in_channels == 4 * flux.vae.config.latent_channels == 64  # 2×2-packed 16-channel latents
    assert isinstance(flux.vae, AutoencoderKL) and flux.vae.quant_conv is None and flux.vae.post_quant_conv is None
    full_vae = family("flux").full_size_config("vae")
    assert flux.vae.config.scaling_factor == full_vae["scaling_factor"]
    assert flux.vae.config.shift_factor == full_vae["shift_factor"]
    assert isinstance(flux.text_encoders[0], CLIPTextModel) and isinstance(flux.text_encoders[1], T5EncoderModel)
    assert len(flux.tokenizers[0]) == 49408  # the real CLIP tokenizer
    assert isinstance(flux.scheduler, FlowMatchEulerDiscreteScheduler) and flux.scheduler.config.use_dynamic_shifting
    assert flux.native_size == 64
    assert isinstance(flux.noise_scheduler(), FlowMatchEulerDiscreteScheduler)


def test_t5_tokenizer_built_in_code_behaves_like_t5(flux):
    tok = flux.tokenizers[1]
    ids = tok(["a photo of TOK robot"]).input_ids[0]
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert tok.unk_token_id not in ids  # any ASCII caption without <unk>
    assert tok.convert_ids_to_tokens(ids[:2]) == ["▁a", "▁photo"]
    assert tok.model_max_length == 512  # [dev]'s T5 length
    assert max(tok.get_vocab().values()) < flux.text_encoders[1].config.vocab_size


def test_folder_is_detected_as_flux_and_saved_configs_agree():
    folder = tiny_model_dir("flux")
    assert detect_family_from_folder(folder) == "flux"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["transformer"][1] == "FluxTransformer2DModel"


def test_encode_prompts_equals_fluxpipeline(flux):
    prompts = ["a photo of sks robot", "a red robot on the beach, high detail"]
    pipe = flux.pipeline()
    with torch.no_grad():
        ours = encode_prompts(flux.family, flux.tokenizers, flux.text_encoders, prompts)
        embeds, pooled, ids = pipe.encode_prompt(prompts, prompt_2=None, device="cpu", max_sequence_length=512)
    assert ours.prompt_embeds.shape == (2, 512, 32) and ours.pooled.shape == (2, 32)
    assert torch.equal(ours.prompt_embeds, embeds)
    assert torch.equal(ours.pooled, pooled)
    assert torch.equal(text_ids(ours), ids)


def test_max_sequence_length_sets_the_t5_length():
    model = load_model(load_config(None, ["model.family='flux'", "model.max_sequence_length=64"]).model)
    cond = encode_prompts(model.family, model.tokenizers, model.text_encoders, ["a robot"])
    assert cond.prompt_embeds.shape[1] == 64


def test_t5_length_is_refused_for_sd():
    with pytest.raises(ConfigError, match="max_sequence_length.*T5 length of FLUX"):
        load_config(None, ["model.family='sd15'", "model.max_sequence_length=64"])


def test_flux_transformer_file_alone_asks_for_its_component_files(tmp_path):
    """(Loading FLUX from single files: tests/models/test_flux_single_files.py.)"""
    from safetensors.torch import save_file

    path = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, str(path))
    cfg = load_config(None, ["model.family='flux'", f"model.pretrained_model_name_or_path='{path}'"]).model
    with pytest.raises(ModelLoadError, match="holds only the transformer.*model.clip_l.*model.t5xxl.*model.ae"):
        load_model(cfg)


def test_schnell_is_the_same_family_without_guidance(tmp_path):
    """[schnell] = the transformer without a guidance embedding: same family, T5 length 256 by default, and the
    training step passes no guidance."""
    import shutil

    from loraforge.models.text import Conditioning
    from loraforge.training.step import LossStep

    folder = tmp_path / "tiny-schnell"
    shutil.copytree(tiny_model_dir("flux"), folder)
    config = folder / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "guidance_embeds": False}))
    model = load_model(load_config(None, [f"model.pretrained_model_name_or_path='{folder}'"]).model)
    assert model.family is family("flux") and not model.guidance_embeds
    assert model.tokenizers[1].model_max_length == 256
    seen = {}

    def transformer(**kw):
        seen.update(kw)
        return (torch.zeros_like(kw["hidden_states"]),)

    step = LossStep(training=load_config(None, ["model.family='flux'"]).training, model=model, unet=transformer,
                    text_encoders=model.text_encoders, noise_scheduler=model.noise_scheduler(), device="cpu",
                    weight_dtype=torch.float32, vae_dtype=torch.float32, resolution=(64, 64),
                    text_needs_grad=lambda: False)
    cond = Conditioning(torch.zeros(1, 8, 32), torch.zeros(1, 32))
    out = step.flow_prediction(torch.zeros(1, 16, 8, 8), torch.tensor([0.5]), cond)
    assert out.shape == (1, 16, 8, 8) and seen["guidance"] is None
    assert seen["hidden_states"].shape == (1, 16, 64) and seen["img_ids"].shape == (16, 3)
