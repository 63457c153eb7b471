"""The model families loraforge trains (SD 1.x, SD 2.x, SDXL, FLUX.1): one `Family` object per family, and the tables
that name a family's weights. A leaf package: it imports only `loraforge.errors` (diffusers is imported lazily, when
a pipeline class is asked for), so every other package may ask it instead of branching on a family's name.

* `registry`: `Family` (label, native resolution, text-encoder parts with their diffusers / kohya / embedding names,
  pipeline class names, how prompts condition the UNet, kohya / SAI metadata values, the full-size architecture),
  `FAMILIES`, `family(name)`, and the tiny-model metadata marker (`BASE_MODEL_KEY`, `tiny_family`).
* `architectures`: the full-size diffusers configs per family (`COMPONENTS`, `TOKENIZER_PADS`) and
  `ModelArchitecture`, an actual model's own configs (a tiny or fine-tuned variant) as a hashable value.
* `ldm`: diffusers <-> original (LDM / SGM) names of UNet, VAE and CLIP weights, derived from the configs.
* `detect`: a diffusers folder's or a single file's family.

Adding a fourth family (another UNet + CLIP model) touches:

1. `architectures.py`: its component configs (`COMPONENTS`: UNet, VAE, text encoders, scheduler, model_index) and
   tokenizer pads (`TOKENIZER_PADS`);
2. `registry.py`: one `Family(...)` entry in `FAMILIES` (text-encoder parts with their kohya / embedding /
   single-file names, pipelines, conditioning, block layout, metadata values);
3. `detect.py`: how to recognise its diffusers folders and diffusers' single-file model type;
4. `ldm.py`, only if its original checkpoints name weights differently from LDM / SGM;
5. `models/tiny.py`: an embedded tiny model of it (one builder in `BUILDERS`), for the tests and the default;
6. the consumer models in `formats/consumers/` (independent oracles: their per-family naming rules are written
   from each consumer's behaviour on purpose; they read the architecture from here).

Everything else (config choices, `--family` flags, kohya names, single files, metadata, embeddings, pipelines,
block-weight counts, caches, the trainer) asks the `Family` object. A family that does not condition like CLIP or
does not denoise like a UNet (FLUX.1: T5 + CLIP, a flow-matching transformer) also adds its `text_conditioning`
encoder to `models/text.py`, and sets `denoiser` (its pipeline attribute) and `objective` ("flow": the math in
`training/flow.py`, the options it refuses in `config/training_flow.py`).
"""

from .architectures import ModelArchitecture
from .registry import (
    BASE_MODEL_KEY,
    DIFFUSERS_PREFIXES,
    FAMILIES,
    FAMILY_LABELS,
    FAMILY_NAMES,
    TINY_RESOLUTION,
    Family,
    TextEncoderPart,
    family,
    full_size_config,
    tiny_base_model,
    tiny_family,
)

__all__ = [
    "BASE_MODEL_KEY",
    "DIFFUSERS_PREFIXES",
    "FAMILIES",
    "FAMILY_LABELS",
    "FAMILY_NAMES",
    "TINY_RESOLUTION",
    "Family",
    "ModelArchitecture",
    "TextEncoderPart",
    "family",
    "full_size_config",
    "tiny_base_model",
    "tiny_family",
]
