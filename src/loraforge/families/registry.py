"""The family registry: one `Family` object per model family loraforge trains, holding every fact the other
packages used to branch on (`is_sdxl`, `== "sdxl"`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .ldm import SD1_TEXT_PREFIX, SD2_TEXT_PREFIX, SDXL_TEXT1_PREFIX, SDXL_TEXT2_PREFIX
from .architectures import COMPONENTS, TOKENIZER_PADS

TINY_RESOLUTION = 64  # native size of every embedded tiny model (`models.tiny`)
# block-weight values per block layout: LDM = IN0-11, MID, OUT0-11; SGM (SDXL) = emb, IN0-8, MID0-2, OUT0-8, out;
# FLUX = the 19 double-stream blocks, then the 38 single-stream blocks (`networks.blocks`)
FLUX_DOUBLE_BLOCKS, FLUX_SINGLE_BLOCKS = 19, 38
BLOCK_LAYOUT_SIZES = {"ldm": 25, "sgm": 23, "flux": FLUX_DOUBLE_BLOCKS + FLUX_SINGLE_BLOCKS}

# The LoRA targets of a FLUX transformer when `network.target_modules` is not set: every linear layer of the double
# blocks (image and text attention, MLPs, modulation) and of the single blocks, as kohya and ai-toolkit train them.
FLUX_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "norm1.linear", "norm1_context.linear",
    "proj_mlp", "proj_out", "norm.linear",
)


@dataclass(frozen=True)
class TextEncoderPart:
    """One text encoder of a family, under every name the formats give it."""

    part: str  # our part name: "te1", "te2" (the UNet is "unet")
    diffusers: str  # pipeline attribute, diffusers folder and PEFT prefix: "text_encoder", "text_encoder_2"
    tokenizer: str  # pipeline attribute / folder of its tokenizer
    kohya_prefixes: tuple[str, ...]  # kohya module prefixes it answers to; the first is the one written
    embedding_key: str  # its tensor in a textual-inversion file of several encoders (SDXL: clip_l / clip_g)
    single_file_prefix: str  # its keys' prefix in an original (LDM / SGM) single file
    single_file_layout: str  # its weights' names there: "clip" (HF CLIP names) or "open_clip" (OpenCLIP names)


@dataclass(frozen=True, eq=False)
class Family:
    """Everything loraforge needs to know about one model family. Compared by identity (one object per family)."""

    name: str  # "sd15" | "sd2" | "sdxl" | "flux"
    label: str  # for messages: "SD 1.x"
    resolution: int  # native training size
    text_encoders: tuple[TextEncoderPart, ...]
    img2img_pipeline: str  # diffusers class name; the txt2img one is the config folder's model_index `_class_name`
    pipeline_kwargs: dict[str, Any]  # what its pipelines are built with (no safety checker, no watermark)
    # How prompts become conditioning (`models.text.encode_tokens`): "clip-last" = the final layer of the one CLIP
    # encoder (after its final layer norm); "clip-penultimate-pooled" = every encoder's penultimate layer,
    # concatenated, plus the pooled output of the projection model; "clip-pooled-t5" = the pooled output of the CLIP
    # encoder plus the last hidden state of the T5 encoder (the sequence; FLUX).
    text_conditioning: str
    size_conditioning: bool  # SDXL micro-conditioning: original size, crop and target size as `time_ids`
    block_layout: str  # sd-scripts' block-weight numbering (`networks.blocks`): "ldm" (25 blocks) or "sgm" (23)
    kohya_unet_names: str  # UNet module names sd-scripts writes: "diffusers" (SD 1.x/2.x) or "original" (SDXL: SGM)
    # kohya / SAI metadata (`formats.metadata`)
    base_model_version: str  # ss_base_model_version
    modelspec_architecture: str
    modelspec_implementation: str
    kohya_v2: bool  # ss_v2
    # the full-size architecture: component -> diffusers config (`architectures.COMPONENTS`), tokenizer pads
    components: dict[str, dict[str, Any]] = field(repr=False)
    tokenizer_pads: dict[str, str] = field(repr=False)
    # The denoiser. Our part name for it is always "unet" (kohya writes `lora_unet_` for every family); this is its
    # pipeline attribute, diffusers folder and diffusers/PEFT LoRA prefix: "unet", or "transformer" (FLUX).
    denoiser: str = "unet"
    # What the denoiser learns: "diffusion" (DDPM noise schedule, epsilon / v prediction) or "flow" (rectified flow:
    # noisy = (1 - σ)·x + σ·noise, target noise - x; `training.flow`).
    objective: str = "diffusion"
    # The denoiser modules a LoRA adapts when `network.target_modules` is not set (None: the config's default)
    default_targets: tuple[str, ...] | None = None
    # The text encoders `network.train_text_encoder` adapts (None: all). FLUX: CLIP-L only, as the diffusers FLUX
    # scripts (T5 LoRA, kohya's `--train_t5xxl`, is not trained yet: diffusers' FLUX LoRA file has no place for it).
    lora_text_encoders: tuple[str, ...] | None = None
    # Sampling when `[sampling]` / `loraforge sample` leave them unset: steps and guidance scale (SD: A1111's CFG 7;
    # FLUX.1 [dev]: the distilled guidance 3.5 and 28 steps of BFL's and diffusers' examples; [schnell]:
    # `models.loading.SCHNELL_SAMPLING`)
    sample_steps: int = 25
    sample_guidance: float = 7.0
    # The text encoders pivotal tuning gives the new tokens only when asked (`training.train_t5_ti`); the others always
    # get them. FLUX: T5, as diffusers' advanced FLUX script (`--enable_t5_ti`); by default T5 reads the new tokens'
    # text (`<s0><s1>`) with its own vocabulary.
    optional_ti_text_encoders: tuple[str, ...] = ()
    # The denoiser's ModuleLists whose blocks `training.blocks_to_swap` keeps partly in CPU memory, in the order its
    # forward runs them (none: the option is refused; the SD UNets' blocks are few and uneven, and they fit)
    swap_blocks: tuple[str, ...] = ()

    @property
    def parts(self) -> tuple[str, ...]:
        """The model parts a LoRA may adapt: "unet" then the text encoders' parts."""
        return ("unet",) + tuple(te.part for te in self.text_encoders)

    @property
    def block_count(self) -> int:
        """How many values a block-wise list (`network.block_dims`, ...) has for this family."""
        return BLOCK_LAYOUT_SIZES[self.block_layout]

    @property
    def is_flow(self) -> bool:
        return self.objective == "flow"

    @property
    def txt2img_pipeline(self) -> str:
        return self.components["model_index"]["_class_name"]

    @property
    def embedding_keys(self) -> tuple[str, ...]:
        """The text encoders' tensor names in a textual-inversion file of several encoders (SDXL: clip_l, clip_g)."""
        return tuple(te.embedding_key for te in self.text_encoders)

    def ti_text_encoders(self, optional: bool = False) -> tuple[TextEncoderPart, ...]:
        """The text encoders pivotal tuning adds the new tokens to: all but the optional ones, unless `optional`."""
        return tuple(te for te in self.text_encoders if optional or te.part not in self.optional_ti_text_encoders)

    def diffusers_prefix(self, part: str) -> str:
        """The diffusers/PEFT LoRA key prefix of a part: the denoiser's ("unet" / "transformer") or a text encoder's."""
        return self.denoiser if part == "unet" else self.text_encoder(part).diffusers

    def text_encoder(self, part: str) -> TextEncoderPart:
        for te in self.text_encoders:
            if te.part == part:
                return te
        raise KeyError(f"{self.label} has no text encoder {part!r}")

    def pipeline_class(self, img2img: bool = False):
        """The diffusers pipeline class (resolved on use: importing diffusers takes seconds)."""
        import diffusers  # heavy, kept lazy

        return getattr(diffusers, self.img2img_pipeline if img2img else self.txt2img_pipeline)

    def full_size_config(self, component: str) -> dict[str, Any]:
        """A copy of the full-size config of `component` ("unet", "vae", "text_encoder", "text_encoder_2",
        "scheduler", "model_index"). UNet/VAE/scheduler dicts feed `Class.from_config`; text-encoder dicts feed
        `CLIPTextConfig.from_dict`."""
        if component not in self.components:
            raise ValueError(f"{self.name} has no component {component!r}; choose one of {sorted(self.components)}")
        return copy.deepcopy(self.components[component])


_SD_PIPELINE = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _te(part: str, diffusers: str, tokenizer: str, kohya: tuple[str, ...], embedding_key: str,
        single_file: tuple[str, str]) -> TextEncoderPart:
    return TextEncoderPart(part, diffusers, tokenizer, kohya, embedding_key, *single_file)


# ComfyUI maps `lora_te_` onto SDXL's CLIP-L too, and `lora_te1_` onto SD 1.x / 2.x's only encoder.
def _one_clip(single_file: tuple[str, str]) -> tuple[TextEncoderPart, ...]:
    return (_te("te1", "text_encoder", "tokenizer", ("lora_te", "lora_te1"), "clip_l", single_file),)

_SD = dict(  # what SD 1.x and 2.x share
    img2img_pipeline="StableDiffusionImg2ImgPipeline",
    pipeline_kwargs=_SD_PIPELINE,
    text_conditioning="clip-last",
    size_conditioning=False,
    block_layout="ldm",
    kohya_unet_names="diffusers",
    modelspec_implementation="diffusers",
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="sd15", label="SD 1.x", resolution=512, **_SD,
            text_encoders=_one_clip((SD1_TEXT_PREFIX, "clip")),
            base_model_version="sd_v1", modelspec_architecture="stable-diffusion-v1", kohya_v2=False,
            components=COMPONENTS["sd15"], tokenizer_pads=TOKENIZER_PADS["sd15"],
        ),
        Family(
            name="sd2", label="SD 2.x", resolution=768, **_SD,
            text_encoders=_one_clip((SD2_TEXT_PREFIX, "open_clip")),
            base_model_version="sd_v2", modelspec_architecture="stable-diffusion-v2-768-v", kohya_v2=True,
            components=COMPONENTS["sd2"], tokenizer_pads=TOKENIZER_PADS["sd2"],
        ),
        Family(
            name="sdxl", label="SDXL", resolution=1024,
            text_encoders=(
                _te("te1", "text_encoder", "tokenizer", ("lora_te1", "lora_te"), "clip_l",
                    (SDXL_TEXT1_PREFIX, "clip")),
                _te("te2", "text_encoder_2", "tokenizer_2", ("lora_te2",), "clip_g",
                    (SDXL_TEXT2_PREFIX, "open_clip")),
            ),
            img2img_pipeline="StableDiffusionXLImg2ImgPipeline",
            pipeline_kwargs={"add_watermarker": False},
            text_conditioning="clip-penultimate-pooled",
            size_conditioning=True,
            block_layout="sgm",
            kohya_unet_names="original",
            base_model_version="sdxl_base_v1-0",
            modelspec_architecture="stable-diffusion-xl-v1-base",
            modelspec_implementation="https://github.com/Stability-AI/generative-models",
            kohya_v2=False,
            components=COMPONENTS["sdxl"],
            tokenizer_pads=TOKENIZER_PADS["sdxl"],
        ),
        Family(
            # [dev] and [schnell] are this one family: the variant is the transformer's `guidance_embeds`
            name="flux", label="FLUX.1", resolution=1024,
            text_encoders=(
                # CLIP-L gives the pooled vector, T5-XXL the sequence; sd-scripts writes T5 LoRA as lora_te3
                _te("te1", "text_encoder", "tokenizer", ("lora_te1", "lora_te"), "clip_l",
                    ("text_encoders.clip_l.transformer.", "clip")),
                _te("te2", "text_encoder_2", "tokenizer_2", ("lora_te3", "lora_te2"), "t5",  # OneTrainer: lora_te2
                    ("text_encoders.t5xxl.transformer.", "t5")),
            ),
            img2img_pipeline="FluxImg2ImgPipeline",
            pipeline_kwargs={},
            text_conditioning="clip-pooled-t5",
            size_conditioning=False,
            block_layout="flux",
            kohya_unet_names="bfl",
            base_model_version="flux1",
            modelspec_architecture="flux-1-dev",
            modelspec_implementation="https://github.com/black-forest-labs/flux",
            kohya_v2=False,
            components=COMPONENTS["flux"],
            tokenizer_pads=TOKENIZER_PADS["flux"],
            denoiser="transformer",
            objective="flow",
            default_targets=FLUX_TARGETS,
            lora_text_encoders=("te1",),
            sample_steps=28,
            sample_guidance=3.5,
            optional_ti_text_encoders=("te2",),
            swap_blocks=("transformer_blocks", "single_transformer_blocks"),  # 19 double, then 38 single
        ),
    )
}
FAMILY_NAMES = tuple(FAMILIES)
FAMILY_LABELS = {name: f.label for name, f in FAMILIES.items()}

# diffusers part prefixes (PEFT / diffusers LoRA keys), over every family
# (the denoiser's is "unet" for the SD families, "transformer" for FLUX: `family(name).denoiser`)
DIFFUSERS_PREFIXES = {"unet": "unet", **{te.part: te.diffusers for f in FAMILIES.values() for te in f.text_encoders}}


def family(name: str | Family) -> Family:
    """The `Family` of a name ("sd15", "sd2", "sdxl", "flux"); a `Family` is returned as is."""
    if isinstance(name, Family):
        return name
    try:
        return FAMILIES[name]
    except KeyError:  # a programming error: configs and files only name known families
        raise ValueError(f"unknown family {name!r}; choose one of {list(FAMILIES)}") from None


def full_size_config(name: str, component: str) -> dict[str, Any]:
    """`family(name).full_size_config(component)`: a copy of one full-size component config."""
    return family(name).full_size_config(component)


# Which model a file was made from, when that is loraforge's embedded tiny model of a family ("tiny-sd15"): the tools
# then resolve and check the file against the tiny architecture instead of the full-size one. Written in LoRA files
# trained on a tiny model and in single files saved from one; kept by the tools that rewrite a LoRA.
BASE_MODEL_KEY = "loraforge_base_model"


def tiny_base_model(name: str) -> str:
    return f"tiny-{name}"


def tiny_family(metadata: dict | None) -> str | None:
    """The family of the embedded tiny model a file says it was made from, or None."""
    value = str((metadata or {}).get(BASE_MODEL_KEY, ""))
    name = value.removeprefix("tiny-")
    return name if value.startswith("tiny-") and name in FAMILIES else None
