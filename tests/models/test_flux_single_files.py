"""FLUX.1 from the single files users keep: the transformer file (BFL layout, bare or ComfyUI's
`model.diffusion_model.`; diffusers layout) with separate `clip_l` / `t5xxl` / `ae` files, float8 files, and an
all-in-one checkpoint, all written here from the embedded tiny FLUX and loaded back to the very same weights."""

import logging

import pytest
import torch
from safetensors.torch import save_file

from loraforge.config import load_config
from loraforge.config.model import ModelConfig
from loraforge.errors import ConfigError, ModelLoadError
from loraforge.families import ldm
from loraforge.formats.flux_single_file import save_flux_transformer
from loraforge.models import flux_files
from loraforge.models.configs import config_folder
from loraforge.models.loading import load_model
from loraforge.models.text import encode_prompts
from loraforge.models.tiny import tiny_model_dir

FP8 = torch.float8_e4m3fn
PARTS = ("unet", "vae", "te1", "te2")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _modules(model):
    return dict(zip(PARTS, (model.unet, model.vae, *model.text_encoders)))


def _parts(ref, fp8: bool = False) -> dict[str, dict]:
    """The tiny FLUX's components as users' files hold them: CLIP-L with transformers' `text_model.` keys, T5 with
    `shared.weight` only (the tied embedding written once), the VAE in the original LDM/BFL layout."""
    def cast(sd):
        return {k: (v.to(FP8) if fp8 and v.is_floating_point() else v).contiguous() for k, v in sd.items()}

    return {
        "clip_l": cast({"text_model." + k: v for k, v in ref.text_encoders[0].state_dict().items()}),
        "t5xxl": cast({k: v for k, v in ref.text_encoders[1].state_dict().items() if k != "encoder.embed_tokens.weight"}),
        "ae": {k: v.contiguous() for k, v in ldm.vae_to_original(ref.vae.state_dict(), ref.vae.config).items()},
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(the tiny FLUX loaded from its folder, {name: path} of its single files)."""
    torch.set_num_threads(1)
    ref = load_model(ModelConfig(family="flux"))
    folder = tmp_path_factory.mktemp("flux-files")
    config = dict(ref.unet.config)
    sd = ref.unet.state_dict()
    out = {"transformer": save_flux_transformer(sd, folder / "flux1-dev.safetensors", config),
           "comfyui": save_flux_transformer(sd, folder / "flux1-dev-comfy.safetensors", config,
                                            prefix="model.diffusion_model."),
           "fp8": save_flux_transformer({k: v.to(FP8) for k, v in sd.items()}, folder / "flux1-dev-fp8.safetensors",
                                        config)}
    for fp8 in (False, True):
        for name, tensors in _parts(ref, fp8).items():
            path = folder / f"{name}{'_fp8_e4m3fn' if fp8 else ''}.safetensors"
            save_file(tensors, str(path))
            out[name + ("_fp8" if fp8 else "")] = path
    return ref, out


def _load(path, **fields):
    return load_model(ModelConfig(pretrained_model_name_or_path=str(path), **{k: str(v) for k, v in fields.items()}))


def _separate(files, transformer="transformer", suffix=""):
    return _load(files[transformer], **{f: files[f + suffix] for f in ("clip_l", "t5xxl", "ae")})


def _same_weights(ref, model):
    for part, a in _modules(ref).items():
        b = _modules(model)[part]
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb), part
        for k in sa:
            assert sb[k].dtype == torch.float32 and torch.equal(sa[k], sb[k]), (part, k)


def _transformer_out(model):
    torch.manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 16, 64), timestep=torch.tensor([0.5]), guidance=torch.tensor([1.0]),
                  pooled_projections=torch.randn(1, 32), encoder_hidden_states=torch.randn(1, 16, 32),
                  txt_ids=torch.zeros(16, 3), img_ids=torch.randn(16, 3).round(), return_dict=False)
    with torch.no_grad():
        return model.unet(**inputs)[0]


def _text(model):
    with torch.no_grad():
        return encode_prompts(model.family, model.tokenizers, model.text_encoders, ["a photo of sks robot"])


@pytest.mark.parametrize("transformer", ["transformer", "comfyui"])
def test_separate_files_load_the_same_model(files, transformer):
    ref, f = files
    model = _separate(f, transformer)
    assert model.family.name == "flux" and model.is_tiny and model.native_size == 64 and model.guidance_embeds
    assert model.source == str(f[transformer]) and model.tokenizers[1].model_max_length == 512
    _same_weights(ref, model)
    # equal weights; the outputs within float rounding (the folder's weights are read from a memory-mapped file, and
    # a tensor's alignment picks the CPU kernel: a deep copy of the folder's model differs from it by 4e-7 too)
    assert torch.allclose(_transformer_out(model), _transformer_out(ref), rtol=0, atol=2e-6)
    ours, want = _text(model), _text(ref)
    assert torch.allclose(ours.prompt_embeds, want.prompt_embeds, rtol=0, atol=2e-6)
    assert torch.allclose(ours.pooled, want.pooled, rtol=0, atol=2e-6)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = model.vae.encode(image).latent_dist.mean
        assert torch.allclose(latents, ref.vae.encode(image).latent_dist.mean, rtol=0, atol=2e-6)


def test_fp8_files_are_upcast_on_read(files, caplog):
    ref, f = files
    with caplog.at_level(logging.INFO, logger="loraforge.models.flux_files"):
        model = _separate(f, "fp8", "_fp8")
    assert "flux1-dev-fp8.safetensors (transformer) stores float8_e4m3fn weights: upcast to float32" in caplog.text
    assert "t5xxl_fp8_e4m3fn.safetensors" in caplog.text
    for part in ("unet", "te1", "te2"):
        want = _modules(ref)[part].state_dict()
        for k, v in _modules(model)[part].state_dict().items():
            assert v.dtype == torch.float32, (part, k)
            assert torch.equal(v, want[k].to(FP8).float()), (part, k)  # exactly the fp8 value, upcast
            assert torch.allclose(v, want[k], rtol=0.07, atol=2e-3), (part, k)  # e4m3: 3 mantissa bits
    out, want = _transformer_out(model), _transformer_out(ref)
    assert not torch.equal(out, want) and (out - want).norm() < 0.1 * want.norm()  # measured 3.7 %


def test_the_load_precision_reaches_every_part(files, caplog):
    ref, f = files
    cfg = ModelConfig(pretrained_model_name_or_path=str(f["fp8"]), clip_l=str(f["clip_l"]), t5xxl=str(f["t5xxl_fp8"]),
                      ae=str(f["ae"]))
    with caplog.at_level(logging.INFO, logger="loraforge.models.flux_files"):
        model = load_model(cfg, dtype=torch.bfloat16)
    assert "stores float8_e4m3fn weights: upcast to bfloat16" in caplog.text
    for part, module in _modules(model).items():
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, part
    weight = model.unet.transformer_blocks[0].attn.to_k.weight
    assert torch.equal(weight, ref.unet.transformer_blocks[0].attn.to_k.weight.to(FP8).to(torch.bfloat16))


def test_a_scaled_fp8_file_is_refused_with_the_plain_files_named(files, tmp_path):
    from safetensors.torch import load_file

    _, f = files
    sd = load_file(str(f["t5xxl_fp8"]))
    sd.update({"scaled_fp8": torch.zeros(2, dtype=FP8), "encoder.block.0.layer.0.SelfAttention.q.scale_weight":
               torch.ones(())})
    scaled = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(sd, str(scaled))
    with pytest.raises(ModelLoadError, match="t5xxl_fp8_e4m3fn_scaled.safetensors .T5-XXL text encoder.: a "
                                             "scaled-fp8 file.*t5xxl_fp16.safetensors"):
        _separate({**f, "t5xxl": scaled})


def test_all_in_one_checkpoint_holds_every_part(files, tmp_path):
    """ComfyUI's FLUX checkpoint layout: `model.diffusion_model.`, `vae.`, `text_encoders.clip_l.transformer.`,
    `text_encoders.t5xxl.transformer.`; a component file given as well replaces that part."""
    from safetensors.torch import load_file

    ref, f = files
    parts = _parts(ref)
    everything = dict(load_file(str(f["comfyui"])))
    everything.update({"vae." + k: v for k, v in parts["ae"].items()})
    everything.update({"text_encoders.clip_l.transformer." + k: v for k, v in parts["clip_l"].items()})
    everything.update({"text_encoders.t5xxl.transformer." + k: v for k, v in parts["t5xxl"].items()})
    path = tmp_path / "flux1-dev-all-in-one.safetensors"
    save_file(everything, str(path))
    _same_weights(ref, _load(path))
    with_fp8_t5 = _load(path, t5xxl=f["t5xxl_fp8"])
    assert torch.equal(with_fp8_t5.text_encoders[1].shared.weight, ref.text_encoders[1].shared.weight.to(FP8).float())


def test_a_missing_component_names_the_field_and_the_file(files):
    _, f = files
    with pytest.raises(ModelLoadError) as e:
        _load(f["transformer"], clip_l=f["clip_l"])
    msg = str(e.value)
    assert "flux1-dev.safetensors holds only the transformer" in msg
    assert "model.t5xxl: pass the T5-XXL text encoder file (t5xxl_fp16.safetensors, kohya's --t5xxl)" in msg
    assert "model.ae: pass the autoencoder (VAE) file (ae.safetensors" in msg and "model.clip_l" not in msg
    with pytest.raises(ModelLoadError, match="model.ae = .*: no such file"):
        _load(f["transformer"], clip_l=f["clip_l"], t5xxl=f["t5xxl"], ae=f["ae"].with_name("nope.safetensors"))


def test_a_file_of_another_part_is_refused_naming_the_field(files):
    _, f = files
    with pytest.raises(ModelLoadError, match=r"model\.clip_l: .*t5xxl\.safetensors is not the CLIP-L text encoder"):
        _load(f["transformer"], clip_l=f["t5xxl"], t5xxl=f["t5xxl"], ae=f["ae"])
    with pytest.raises(ModelLoadError, match=r"model\.ae: .*clip_l\.safetensors is not the autoencoder"):
        _load(f["transformer"], clip_l=f["clip_l"], t5xxl=f["t5xxl"], ae=f["clip_l"])


def test_a_component_file_lacking_weights_is_refused(files, tmp_path):
    from safetensors.torch import load_file

    ref, f = files
    for field, drop in (("ae", "decoder.conv_out.bias"), ("t5xxl", "encoder.final_layer_norm.weight")):
        sd = load_file(str(f[field]))
        del sd[drop]
        cut = tmp_path / f"cut-{field}.safetensors"
        save_file(sd, str(cut))
        with pytest.raises(ModelLoadError, match=rf"model\.{field}: .*cut-{field}\.safetensors is not the .*missing"):
            _separate({**f, field: cut})


def test_full_size_configs_refuse_the_tiny_transformer_with_the_fix(files):
    _, f = files
    with pytest.raises(ModelLoadError, match="do not fit the FLUX.1 transformer config.*model.config_dir"):
        flux_files.load_transformer(f["transformer"], config_folder("flux"), None)


def test_config_dir_describes_the_file(files):
    ref, f = files
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(f["transformer"]),
                                   config_dir=str(tiny_model_dir("flux")),
                                   **{k: str(f[k]) for k in ("clip_l", "t5xxl", "ae")}))
    assert not model.is_tiny  # the user's configs: the family's size is assumed
    _same_weights(ref, model)


def test_diffusers_layout_and_schnell_transformer_files(files, tmp_path):
    ref, f = files
    sd = ref.unet.state_dict()
    diffusers_file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(diffusers_file))
    _same_weights(ref, _separate({**f, "x": diffusers_file}, "x"))
    schnell = {k: v for k, v in sd.items() if "guidance_embedder" not in k}
    schnell_file = save_flux_transformer(schnell, tmp_path / "flux1-schnell.safetensors", dict(ref.unet.config))
    model = _separate({**f, "x": schnell_file}, "x")
    assert not model.guidance_embeds and model.tokenizers[1].model_max_length == 256
    assert model.scheduler.config.shift == 1.0 and not model.scheduler.config.use_dynamic_shifting
    assert all(torch.equal(v, sd[k]) for k, v in model.unet.state_dict().items())


def test_a_bfl_vae_file_as_model_vae(files):
    ref, f = files
    model = load_model(ModelConfig(family="flux", pretrained_model_name_or_path=str(tiny_model_dir("flux")),
                                   vae=str(f["ae"])))
    assert all(torch.equal(v, ref.vae.state_dict()[k]) for k, v in model.vae.state_dict().items())


def test_component_fields_need_a_flux_single_file(files):
    _, f = files
    with pytest.raises(ConfigError, match="model.clip_l: component files of a FLUX.1 single file; set "
                                          "model.pretrained_model_name_or_path"):
        load_config(None, [f"model.clip_l='{f['clip_l']}'"])
    with pytest.raises(ConfigError, match="model.ae: .*model.family = 'sdxl'"):
        load_config(None, ["model.family='sdxl'", "model.pretrained_model_name_or_path='x.safetensors'",
                           f"model.ae='{f['ae']}'"])
    with pytest.raises(ModelLoadError, match="model.t5xxl: .*a folder or hub id holds its own"):
        load_model(ModelConfig(pretrained_model_name_or_path=str(tiny_model_dir("flux")), t5xxl=str(f["t5xxl"])))


def test_kohya_flags_import_to_the_fields():
    from loraforge.config.importer import import_text

    toml = "\n".join(f'{k} = "/m/{v}"' for k, v in [("pretrained_model_name_or_path", "flux1-dev.safetensors"),
                                                     ("clip_l", "clip_l.safetensors"), ("ae", "ae.safetensors"),
                                                     ("t5xxl", "t5xxl_fp16.safetensors")])
    got = {m.key: m.value for m in import_text(toml, "kohya.toml").mapped}
    assert got["model.clip_l"] == "/m/clip_l.safetensors" and got["model.ae"] == "/m/ae.safetensors"
    assert got["model.t5xxl"] == "/m/t5xxl_fp16.safetensors"


def test_no_t5_tokenizer_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(flux_files, "T5_TOKENIZER_REPOS", (("loraforge-tests/no-such-repo", None),))
    with pytest.raises(ModelLoadError, match="T5 tokenizer is not shipped.*model.config_dir"):
        flux_files.t5_tokenizer_from_cache()


def test_two_training_steps_from_the_single_files(files, tmp_path):
    """The training path end to end on a model given as files (the config as `make_config` writes it, without the
    tiny SD models that fixture builds)."""
    from loraforge.training.trainer import Trainer

    _, f = files
    overrides = {"model.pretrained_model_name_or_path": f["comfyui"], "model.clip_l": f["clip_l"],
                 "model.t5xxl": f["t5xxl_fp8"], "model.ae": f["ae"], "model.max_sequence_length": 16,
                 "output.output_dir": tmp_path / "out", "output.output_name": "flux-files", "output.log_with": "none",
                 "training.max_train_steps": 2, "network.rank": 4, "optimizer.learning_rate": 1e-3,
                 "sampling.at_end": False}
    t = Trainer(load_config(None, [f"{k}={str(v)!r}" if not isinstance(v, (int, float)) else f"{k}={v}"
                                   for k, v in overrides.items()]))
    result = t.run()
    assert t.model.source == str(f["comfyui"]) and t.model.is_tiny and t.model.family.name == "flux"
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.files.kohya.is_file() and result.files.diffusers.is_file()


def test_full_size_transformer_files_are_told_apart_from_the_tiny_ones(tmp_path):
    """Only the keys and the width are read: a 3072-wide file is full-size FLUX (trained at 1024 px), in either
    layout; 32 wide is the embedded tiny FLUX's (64 px)."""
    from loraforge.models.loading import detect_model_family

    layouts = {"bfl": ("img_in.weight", "double_blocks.0.img_attn.qkv.weight",
                       "double_blocks.0.img_attn.norm.key_norm.scale", "guidance_in.in_layer.weight"),
               "diffusers": ("x_embedder.weight", "transformer_blocks.0.attn.to_q.weight",
                             "single_transformer_blocks.0.attn.to_q.weight")}
    for layout, keys in layouts.items():
        for width, tiny in ((3072, False), (32, True)):
            path = tmp_path / f"{layout}-{width}.safetensors"
            save_file({k: torch.zeros(width if i == 0 else 1, 64 if i == 0 else 1) for i, k in enumerate(keys)},
                      str(path))
            assert detect_model_family(ModelConfig(pretrained_model_name_or_path=str(path))) == ("flux", tiny), path


def test_the_full_size_ae_layout_converts_to_every_weight():
    """On the meta device: FLUX.1's full-size VAE written in the original `ae.safetensors` names (SD's LDM layout,
    no quant convs) is read back by diffusers' converter, as `load_vae` uses it, to every weight with its shape."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from loraforge.families import full_size_config

    with init_empty_weights():
        vae = AutoencoderKL.from_config(full_size_config("flux", "vae"))
    sd = vae.state_dict()
    original = ldm.vae_to_original(sd, vae.config)
    assert original["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert {"decoder.up.3.block.2.conv2.weight", "encoder.down.0.downsample.conv.weight"} <= set(original)
    assert not any("quant_conv" in k for k in original)
    back = convert_ldm_vae_checkpoint(original, vae.config)
    assert set(back) == set(sd) and all(back[k].shape == sd[k].shape for k in sd)
