"""`[model]` options that choose which weights are loaded: a replacement VAE, a weight variant, a hub revision."""

import shutil

import torch

from loraforge.config import load_config
from loraforge.models.loading import load_model


def model_cfg(**values):
    return load_config(None, [f"model.{k}={v!r}" for k, v in values.items()]).model


def _perturbed(module, seed: int):
    """The module with every weight shifted by seeded noise: the same architecture, other weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_replacement_vae_is_the_one_used(tiny_dirs, tmp_path):
    from diffusers import AutoencoderKL

    base = AutoencoderKL.from_pretrained(str(tiny_dirs["sd15"]), subfolder="vae")
    replacement = _perturbed(AutoencoderKL.from_pretrained(str(tiny_dirs["sd15"]), subfolder="vae"), 1)
    replacement.save_pretrained(tmp_path / "vae-folder")  # a VAE's own folder
    replacement.save_pretrained(tmp_path / "model-folder" / "vae")  # the vae/ of a diffusers model folder
    assert _same_weights(load_model(model_cfg(family="sd15")).vae, base)
    for folder in ("vae-folder", "model-folder"):
        vae = load_model(model_cfg(family="sd15", vae=str(tmp_path / folder))).vae
        assert _same_weights(vae, replacement) and not _same_weights(vae, base), folder


def test_variant_picks_the_variant_weights(tiny_dirs, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    folder = tmp_path / "model"
    shutil.copytree(tiny_dirs["sd15"], folder)  # the plain weights
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    plain_unet = pipe.unet
    pipe.unet = _perturbed(UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet"), 2)
    pipe.save_pretrained(folder, variant="fp16")  # *.fp16.safetensors next to the plain files
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    plain = load_model(model_cfg(pretrained_model_name_or_path=str(folder)))
    variant = load_model(model_cfg(pretrained_model_name_or_path=str(folder), variant="fp16"))
    assert _same_weights(plain.unet, plain_unet)
    assert _same_weights(variant.unet, pipe.unet) and not _same_weights(variant.unet, plain_unet)


def test_hub_revision_and_variant_reach_from_pretrained(tiny_dirs, monkeypatch):
    # The hub is offline in tests: record what loraforge asks diffusers for, and answer with the tiny model.
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel

    load_tiny, read_config = StableDiffusionPipeline.from_pretrained, DiffusionPipeline.load_config
    read_unet_config = UNet2DConditionModel.load_config
    asked = {}

    def unet_config(name, **kw):  # the family check reads the UNet config (SD 1.x vs SD 2.x)
        if name != "someone/some-model":
            return read_unet_config(name, **kw)
        asked["unet_config"] = (name, kw)
        return {"cross_attention_dim": 768}

    def load_config(name, **kw):
        if name != "someone/some-model":  # diffusers reading the tiny model's own index
            return read_config(name, **kw)
        asked["load_config"] = (name, kw)
        return {"_class_name": "StableDiffusionPipeline"}

    def from_pretrained(name, **kw):
        asked["from_pretrained"] = (name, kw)
        return load_tiny(str(tiny_dirs["sd15"]), local_files_only=True, safety_checker=None,
                         requires_safety_checker=False)

    monkeypatch.setattr(DiffusionPipeline, "load_config", load_config)
    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", from_pretrained)
    monkeypatch.setattr(UNet2DConditionModel, "load_config", unet_config)
    m = load_model(model_cfg(pretrained_model_name_or_path="someone/some-model", revision="0123abc", variant="fp16"))
    assert m.source == "hub:someone/some-model" and m.family.name == "sd15"
    assert asked["load_config"] == ("someone/some-model", {"revision": "0123abc"})
    assert asked["unet_config"] == ("someone/some-model", {"subfolder": "unet", "revision": "0123abc"})
    name, kw = asked["from_pretrained"]
    assert name == "someone/some-model" and kw["revision"] == "0123abc" and kw["variant"] == "fp16"
