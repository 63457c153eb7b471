"""The embedded default: tiny models of the real SD 1.5, SD 2.x (v-prediction), SDXL and FLUX.1 [dev] architectures.

They are built in code from the same config classes as the real models (only the widths, depths and head counts are
small), with the real 49,408-token CLIP vocabulary, so every code path (tokenizers, text encoders, UNet blocks,
SDXL's pooled embeds and time ids, VAE scaling; FLUX's double- and single-stream blocks, RoPE, guidance embedding,
16-channel VAE without quant convs, CLIP-L pooled + T5 sequence) is the real one. Weights are random with a fixed seed, so the same
model is built on every machine. Built once into the cache folder and reused.
"""

from __future__ import annotations

from pathlib import Path

from ..utils.files import atomic_dir, cache_home
from ..families import full_size_config
from .tokenizer import clip_tokenizer, t5_tokenizer

TINY_VERSION = 2  # bump when the architecture below changes, so stale caches are rebuilt


def small_vae(block_out_channels=(16, 32, 32, 32), norm_num_groups: int = 8, **extra):
    """An SD VAE (AutoencoderKL, 4 latent channels) with one layer per level; the level count sets the factor.
    `extra` overrides (FLUX: 16 latent channels, no quant convs, its scaling and shift factors)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{**dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(block_out_channels),
        up_block_types=["UpDecoderBlock2D"] * len(block_out_channels),
        block_out_channels=list(block_out_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_num_groups,
        sample_size=64,
    ), **extra})


def clip_config(hidden: int, act: str, projection: int | None = None, layers: int = 2):
    """A CLIP text-encoder config with the real 49,408-token vocabulary and 77 positions, at a small width."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=projection or hidden,
    )


def _tiny_sd_pipeline(scheduler, te_act: str, te_layers: int, te_pad_id: int, pad_token: str, **unet_extra):
    """An SD 1.x/2.x-layout pipeline: two-level UNet with attention at full latent resolution, one CLIP."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
        **unet_extra,
    )
    vae = small_vae()
    te = clip_config(32, te_act)
    te.num_hidden_layers, te.pad_token_id = te_layers, te_pad_id
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(te),
        tokenizer=clip_tokenizer(pad_token=pad_token),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sd15_scheduler():
    """SD 1.5's noise schedule and PNDM sampler settings (epsilon prediction)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_tiny_sd15():
    """SD 1.5: CLIP-L-style text encoder (quick_gelu), 1×1-conv projections, epsilon prediction, PNDM."""
    return _tiny_sd_pipeline(sd15_scheduler(), "quick_gelu", 2, 1, "<|endoftext|>", attention_head_dim=8)


def build_tiny_sd2():
    """SD 2.x 768-v: OpenCLIP-H-style text encoder (an HF CLIPTextModel with gelu), linear projections, attention
    upcast, v-prediction, tokenizer padding with `!` (id 0)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    return _tiny_sd_pipeline(scheduler, "gelu", 3, 0, "!", attention_head_dim=(2, 4), use_linear_projection=True,
                             upcast_attention=True)


def build_tiny_sdxl():
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    # TE2 must be wider than TE1: single-file loading tells CLIP-L from bigG by width (offline.md section 4).
    te1 = clip_config(32, "quick_gelu")
    te2 = clip_config(64, "gelu", projection=64)
    unet = UNet2DConditionModel(
        sample_size=8,
        # Three levels like the real SDXL (no attention at the first), so the SGM block indices
        # (input_blocks 0-8, middle_block, output_blocks 0-8) are the real ones.
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        cross_attention_dim=te1.hidden_size + te2.hidden_size,
        projection_class_embeddings_input_dim=6 * 8 + te2.projection_dim,
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=small_vae(),
        text_encoder=CLIPTextModel(te1),
        text_encoder_2=CLIPTextModelWithProjection(te2),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def build_tiny_flux():
    """FLUX.1 [dev]: a FluxTransformer2DModel with 2 double-stream and 2 single-stream blocks (RoPE over 3 axes,
    guidance embedding, 2×2-packed 16-channel latents), a 16-channel VAE without quant convs (FLUX's scaling and
    shift factors), CLIP-L with the real tokenizer (pooled output) and a small T5 encoder (gated GELU, relative
    positions) with a T5 tokenizer built in code; FLUX's FlowMatchEuler scheduler with its dynamic shift."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip, t5_width = clip_config(32, "quick_gelu"), 32
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels × the 2×2 packing
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        pooled_projection_dim=clip.hidden_size,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, as FLUX's (16, 56, 56) sums to 128
    )
    vae_cfg = full_size_config("flux", "vae")
    vae = small_vae(latent_channels=vae_cfg["latent_channels"], scaling_factor=vae_cfg["scaling_factor"],
                    shift_factor=vae_cfg["shift_factor"], use_quant_conv=False, use_post_quant_conv=False)
    tokenizer_2 = t5_tokenizer()
    t5 = T5EncoderModel(T5Config(
        vocab_size=256, d_model=t5_width, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False, tie_word_embeddings=False,
    ))
    scheduler_cfg = {k: v for k, v in full_size_config("flux", "scheduler").items() if not k.startswith("_")}
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_cfg),
        vae=vae,
        text_encoder=CLIPTextModel(clip),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


BUILDERS = {"sd15": build_tiny_sd15, "sd2": build_tiny_sd2, "sdxl": build_tiny_sdxl, "flux": build_tiny_flux}


def tiny_model_dir(family: str, root: Path | None = None) -> Path:
    """Folder of the tiny model of `family` (a diffusers folder), built and saved on first use."""
    if family not in BUILDERS:
        raise ValueError(f"no embedded tiny model for family {family!r}; choose one of {sorted(BUILDERS)}")
    root = Path(root) if root is not None else cache_home() / "models"
    folder = root / f"tiny-{family}-v{TINY_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    import torch  # lazy, as in the builders

    with torch.random.fork_rng():  # the builders seed torch; the caller's random state is left as it was
        pipe = BUILDERS[family]()
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp)
    return folder
