"""The toy model: the real SD 1.5 architecture (diffusers UNet2DConditionModel, CLIPTextModel with the real CLIP
tokenizer, AutoencoderKL) at small widths, pretrained on the toy world (`loraforge.world`) by
`scripts/pretrain_toy.py`.

Unlike the tiny models (random weights, for code paths), this one knows its world: it draws "a red circle on a blue
background, top left". Its weights ship in the package (`assets/toy-sd15.safetensors`, fp16, every component in one
file under `unet.` / `vae.` / `text_encoder.` prefixes); `toy_model_dir()` turns them into a diffusers folder in the
cache on first use, checked against the checksum in `assets/toy-sd15.json`.

Layout choices, sized so a LoRA trains in about a minute on a CPU: the VAE has three levels (a factor of 4: 64 × 64
images give 16 × 16 latents; measured on this world, a factor-8 VAE let the judge read 40 % of the shapes from its
reconstructions after 6000 steps, a factor-4 one 69 % after 1500); the UNet has SD 1.5's block types at three levels
of 32/64/128 channels with two layers each, attention at 8 × 8 and 4 × 4 and in the middle block, none at 16 × 16.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError
from ..utils.files import atomic_dir, cache_home, file_sha256
from .tiny import clip_config, sd15_scheduler, small_vae
from .tokenizer import clip_tokenizer

ASSETS = Path(__file__).parent / "assets"
WEIGHTS = ASSETS / "toy-sd15.safetensors"
REPORT = ASSETS / "toy-sd15.json"
TE_HIDDEN = 64
TOY_NAME = "toy"  # `model.pretrained_model_name_or_path = "toy"` / `--model toy` name this model


def toy_vae():
    # 4 groups: with one channel per group (16 groups of the 16-channel first level) the last GroupNorm removes each
    # image's mean per channel, and the decoder cannot say what colour a flat background is
    return small_vae((16, 32, 64), norm_num_groups=4)


def toy_text_encoder():
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_config(TE_HIDDEN, "quick_gelu", layers=3))


def toy_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TE_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,  # at least 4 channels a group (see toy_vae)
    )


def toy_pipeline(unet=None, vae=None, text_encoder=None):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae or toy_vae(),
        text_encoder=text_encoder or toy_text_encoder(),
        tokenizer=clip_tokenizer(pad_token="<|endoftext|>"),
        unet=unet or toy_unet(),
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_toy_weights(pipe, path: Path | None = None) -> None:
    """Load the one-file weights (`unet.` / `vae.` / `text_encoder.` prefixes) into `pipe` (float32)."""
    from safetensors.torch import load_file

    path = path or WEIGHTS
    state = load_file(str(path))
    for part in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, part)
        sub = {k[len(part) + 1:]: v.float() for k, v in state.items() if k.startswith(part + ".")}
        missing, unexpected = module.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise ModelLoadError(f"{path}: the {part} weights do not fit the toy architecture ({len(missing)} missing, "
                                 f"{len(unexpected)} unexpected keys); rebuild them with scripts/pretrain_toy.py")
    if "vae_scaling_factor" in (meta := _metadata(path)):
        pipe.vae.register_to_config(scaling_factor=float(meta["vae_scaling_factor"]))


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def toy_model_dir(root: Path | None = None) -> Path:
    """Folder of the pretrained toy model (a diffusers folder), built from the shipped weights on first use."""
    if not WEIGHTS.is_file():
        raise ModelLoadError(f"{WEIGHTS}: the pretrained toy model is missing from this install; build it with "
                             "`python scripts/pretrain_toy.py` (see docs/toy-world.md)")
    expected = json.loads(REPORT.read_text()).get("sha256") if REPORT.is_file() else None
    digest = file_sha256(WEIGHTS)
    if expected and digest != expected:
        raise ModelLoadError(f"{WEIGHTS}: checksum {digest[:12]}… differs from {REPORT.name}'s {expected[:12]}…; the "
                             "file is damaged: reinstall loraforge or rebuild it with scripts/pretrain_toy.py")
    root = Path(root) if root is not None else cache_home() / "models"
    folder = root / f"toy-sd15-{digest[:12]}"
    if (folder / "model_index.json").is_file():
        return folder
    pipe = toy_pipeline()
    load_toy_weights(pipe)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp)
    return folder
