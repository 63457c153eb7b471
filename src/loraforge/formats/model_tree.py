"""The module tree a LoRA file is resolved against: per part (`unet`, `te1`, `te2`) the diffusers / transformers
module paths with their weight shapes, and every name a LoRA file may give each module.

Names per module: kohya names in diffusers spelling (`lora_unet_down_blocks_1_attentions_0_...`), in LDM / SGM
spelling (`lora_unet_input_blocks_4_1_...`, derived from the UNet config by `families.ldm`), SimpleTuner's `lycoris_`
prefix, and the dotted diffusers / PEFT names (`unet.<path>`, `text_encoder.<path>`, `text_encoder_2.<path>`, with or
without the `text_model.` level that transformers 5 dropped from `CLIPTextModel` but keeps in
`CLIPTextModelWithProjection`). Built from a loaded model, a diffusers folder's configs (meta device), or the
full-size tables of a family (`formats.consumers.tables`), so no weights are needed to resolve names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import MissingKeyError
from ..families import family, full_size_config
from ..families.detect import detect_family_from_folder
from ..families.ldm import unet_module_to_original
from .consumers.tables import family_tables


@dataclass
class ModelTree:
    """The module names (and weight shapes) a LoRA file is resolved against: per part, module path -> weight shape
    (None for containers), plus the UNet config the LDM/SGM names derive from."""

    family: str
    unet_config: dict
    modules: dict[str, dict[str, tuple | None]]
    _index: dict | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_components(cls, family: str, unet, text_encoders) -> "ModelTree":
        modules = {"unet": _module_shapes(unet)}
        for i, te in enumerate(text_encoders):
            modules[f"te{i + 1}"] = _module_shapes(te)
        return cls(family, dict(unet.config), modules)

    @classmethod
    def from_model(cls, model) -> "ModelTree":
        """From a loaded `SDModel`."""
        return cls.from_components(model.family.name, model.unet, model.text_encoders)

    @classmethod
    def for_family(cls, name: str) -> "ModelTree":
        """The full-size model of `family`, from the meta-device tables (no weights, about a second, cached)."""
        fam = family(name)
        tables = dict(family_tables(name).diffusers_modules)
        modules = {"unet": tables.pop("unet")}
        # the consumer tables name the encoders their own way ("te" / "te1", "te2"), in the family's order
        for te, role in zip(fam.text_encoders, tables):
            modules[te.part] = tables[role]
        return cls(name, full_size_config(name, "unet"), modules)

    @classmethod
    def from_folder(cls, folder) -> "ModelTree":
        """A diffusers folder's model, built from its configs on the meta device (its weights are not read)."""
        from accelerate import init_empty_weights
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        folder = Path(folder)
        name = detect_family_from_folder(folder)
        if name is None:
            raise MissingKeyError(f"{folder} is not a diffusers Stable Diffusion folder (no unet/config.json)")
        unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
        tes = []
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(unet_cfg)
            for te in family(name).text_encoders:
                cfg = CLIPTextConfig.from_pretrained(str(folder / te.diffusers))
                with_projection = "CLIPTextModelWithProjection" in (cfg.architectures or [])
                tes.append((CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg))
        return cls.from_components(name, unet, tes)

    def name_index(self) -> dict[str, tuple[str, str] | None]:
        """Every name a file may give a module (kohya in diffusers / LDM / SGM spelling, diffusers dotted) ->
        (part, path); None marks a name that two modules would share."""
        if self._index is None:
            self._index = _build_index(self)
        return self._index

    def resolve(self, name: str) -> tuple[str, str] | None:
        index = self.name_index()
        for candidate in _name_variants(name):
            if index.get(candidate):
                return index[candidate]
        return None

    def shape(self, part: str, path: str) -> tuple | None:
        return self.modules.get(part, {}).get(path)


def _module_shapes(model) -> dict[str, tuple | None]:
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        out[name] = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
    return out


def _build_index(tree: ModelTree) -> dict[str, tuple[str, str] | None]:
    index: dict[str, tuple[str, str] | None] = {}

    def add(key: str, target: tuple[str, str]) -> None:
        if key in index and index[key] != target:
            index[key] = None
        else:
            index[key] = target

    for path, shape in tree.modules.get("unet", {}).items():
        if shape is None or not path:
            continue
        target = ("unet", path)
        flat = path.replace(".", "_")
        for key in (f"lora_unet_{flat}", f"lycoris_{flat}", f"unet.{path}", path):
            add(key, target)
        try:
            ldm = unet_module_to_original(path, tree.unet_config)
        except KeyError:
            continue
        add("lora_unet_" + ldm.replace(".", "_"), target)
    for te in family(tree.family).text_encoders:
        part, prefixes, dotted = te.part, te.kohya_prefixes, te.diffusers
        for path, shape in tree.modules.get(part, {}).items():
            if shape is None or not path:
                continue
            target = (part, path)
            core = path.removeprefix("text_model.")
            flat = core.replace(".", "_")
            for prefix in prefixes:
                add(f"{prefix}_text_model_{flat}", target)
                add(f"{prefix}_{flat}", target)
            for key in (f"{dotted}.{path}", f"{dotted}.text_model.{core}", f"{dotted}.{core}"):
                add(key, target)
    return index


def _name_variants(name: str):
    yield name
    if "." not in name:
        return
    name = name.removeprefix("base_model.model.")
    yield name
    # diffusers' old attention processors: `...attn1.processor.to_q` (+ `_lora.up.weight`), `to_out` = `to_out.0`
    old = name.replace(".processor.", ".")
    old = re.sub(r"\.to_out$", ".to_out.0", old)
    yield old
    yield "unet." + old
