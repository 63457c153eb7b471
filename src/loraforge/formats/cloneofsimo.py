"""cloneofsimo/lora (`lora_diffusion`) files: the first LoRA files for Stable Diffusion (SD 1.x / 2.x), read so that
they can be converted to the kohya layout A1111 and ComfyUI load.

Two layouts, neither with a module name:

* "safeloras" (`.safetensors`): per model part a group (`unet`, `text_encoder`, the pipeline attribute) of tensor
  pairs `<group>:<i>:up` / `<group>:<i>:down`, the header metadata naming each group's target module classes as a
  JSON list (`"unet": "[\"CrossAttention\", \"Attention\", \"GEGLU\"]"`) and each pair's rank (`unet:<i>:rank`).
  Textual-inversion vectors (pivotal tuning) sit beside them as `<token>` tensors of shape [d], their metadata value
  being `<embed>`;
* `.pt` (`lora_weight.pt` for the UNet, `lora_weight.text_encoder.pt`): a pickled flat list [up0, down0, up1, down1,
  ...]; nothing says which classes were targeted, so the default sets are tried (UNet: attention + GEGLU, then with
  the resnets as well; text encoder: CLIP attention). The vectors of that run are `lora_weight.ti.pt`, a pickled
  `{token: [d]}`.

Pair i belongs to the i-th Linear (or Conv2d) child of the target classes as `lora_diffusion` walks the model: every
module of a target class in `model.modules()` order, then its children in `named_modules()` order. Since no names
are stored, loraforge replays that walk on our module tree (`ModelTree`, the current diffusers / transformers
names): `ANCESTORS` says where each class lives and the order of its children. One difference between diffusers
versions matters: the `BasicTransformerBlock` of cloneofsimo's time declared `ff` between `attn1` and `attn2`, later
ones declare it last; both orders are tried and every pair's shapes must fit its module, so a wrong order (or a wrong
base model) is refused rather than applied to the wrong weights.

The scale: `lora_diffusion` adds `up @ down` at scale 1.0 (no alpha; safeloras store `up` already multiplied by the
training scale). kohya divides alpha by the rank, so the converted modules get alpha = rank.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import AdapterModule
from ..errors import ShapeMismatchError, UnsupportedError
from ..families import family as family_info
from ..utils.files import open_safetensors
from .lora_keys import DOWN, UP
from .model_tree import ModelTree

EMBED_FLAG = "<embed>"  # the metadata value marking a textual-inversion tensor in a safelora
PAIR_KEY = re.compile(r"^(?P<group>[^:]+):(?P<index>\d+):(?P<side>up|down)$")
TEXT_ENCODER_PT = ".text_encoder.pt"  # `lora_weight.text_encoder.pt` beside `lora_weight.pt`
EMBEDDINGS_PT = ".ti.pt"  # `lora_weight.ti.pt`: {token: vector}

UNET_TARGETS = ("CrossAttention", "Attention", "GEGLU")  # lora_diffusion's defaults
UNET_EXTENDED_TARGETS = UNET_TARGETS + ("ResnetBlock2D",)
TEXT_TARGETS = ("CLIPAttention",)
DEFAULT_TARGETS = {"unet": (UNET_TARGETS, UNET_EXTENDED_TARGETS), "text_encoder": (TEXT_TARGETS,)}

_ATTENTION = (r"\.attn[12]$", ("to_q", "to_k", "to_v", "to_out.0"))
# target class -> (where its modules are in diffusers / transformers paths, its Linear / Conv2d children in the order
# lora_diffusion's walk meets them)
ANCESTORS = {
    "CrossAttention": _ATTENTION,  # the class's name in early diffusers
    "Attention": _ATTENTION,
    "GEGLU": (r"\.ff\.net\.0$", ("proj",)),
    "ResnetBlock2D": (r"(^|\.)resnets\.\d+$", ("conv1", "time_emb_proj", "conv2", "conv_shortcut")),
    "CLIPAttention": (r"(^|\.)self_attn$", ("k_proj", "v_proj", "q_proj", "out_proj")),
}
# the order of a transformer block's targets in the diffusers version a file was trained with
BLOCK_ORDERS = {
    "diffusers of cloneofsimo's time (attn1, ff, attn2)": ("attn1", "ff", "attn2"),
    "later diffusers (attn1, attn2, ff)": ("attn1", "attn2", "ff"),
}
_BLOCK_ROLE = re.compile(r"^(?P<block>.*)\.(?P<role>attn1|attn2|ff)(\.net\.0)?$")


@dataclass
class CloneofsimoLora:
    """What a cloneofsimo file holds: per group (`unet`, `text_encoder`) its (up, down) pairs in file order and the
    target classes (None for a `.pt` file: unknown), and the textual-inversion vectors by token."""

    source: str
    layout: str  # "safelora" or "pt"
    pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]
    targets: dict[str, tuple[str, ...] | None]
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)

    def ranks(self) -> dict[str, list[int]]:
        return {g: [int(down.shape[0]) for _, down in pairs] for g, pairs in self.pairs.items()}

    def guess_family(self) -> str:
        """SD 2.x when an input width is OpenCLIP-H's 1024 (its text encoder, the UNet's cross-attention), else
        SD 1.x (cloneofsimo trained those two only)."""
        widths = {int(down.shape[1]) for pairs in self.pairs.values() for _, down in pairs}
        widths |= {int(v.shape[-1]) for v in self.embeddings.values()}
        return "sd2" if 1024 in widths else "sd15"

    def embedding_tokens(self) -> list[str]:
        """The tokens in prompt order: `<s1>`, `<s2>`, ... `<s10>` (numbers compared as numbers)."""
        return sorted(self.embeddings, key=lambda t: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", t)])


# ------------------------------------------------------------------------------------------------------- reading
def is_safelora(keys, metadata: dict | None) -> bool:
    """A safelora: `<group>:<i>:up|down` keys whose group the metadata describes, or only `<embed>` tensors."""
    metadata = metadata or {}
    keys = list(keys)
    pairs = [m.group("group") for m in map(PAIR_KEY.match, keys) if m]
    if pairs:
        return all(g in metadata for g in pairs)
    return bool(keys) and all(metadata.get(k) == EMBED_FLAG for k in keys)


def is_pt_lora(data) -> bool:
    """A cloneofsimo `.pt` LoRA: a list of tensors, up then down, each up's inner size its down's rank."""
    if not isinstance(data, (list, tuple)) or not data or len(data) % 2:
        return False
    if not all(isinstance(t, torch.Tensor) and t.dim() in (2, 4) for t in data):
        return False
    return all(up.shape[1] == down.shape[0] for up, down in zip(data[::2], data[1::2]))


def read_safelora(path) -> CloneofsimoLora:
    path = Path(path)
    with open_safetensors(path) as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    found: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    embeddings: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if metadata.get(key) == EMBED_FLAG:
            embeddings[key] = tensor
            continue
        m = PAIR_KEY.match(key)
        if not m or m.group("group") not in metadata:
            raise UnsupportedError(f"{path}: key {key!r} is neither a cloneofsimo LoRA pair (<group>:<i>:up/down with "
                                   "the group in the metadata) nor an embedding (metadata value <embed>)")
        found.setdefault(m.group("group"), {}).setdefault(int(m.group("index")), {})[m.group("side")] = tensor
    pairs, targets = {}, {}
    for group, by_index in found.items():
        missing = [f"{group}:{i}:{side}" for i in range(max(by_index) + 1) for side in ("up", "down")
                   if side not in by_index.get(i, {})]
        if missing:
            raise UnsupportedError(f"{path}: incomplete cloneofsimo LoRA, missing {', '.join(missing[:6])}")
        pairs[group] = [(by_index[i]["up"], by_index[i]["down"]) for i in range(len(by_index))]
        targets[group] = _targets(path, group, metadata[group])
    return CloneofsimoLora(str(path), "safelora", pairs, targets, embeddings)


def _targets(path: Path, group: str, raw: str) -> tuple[str, ...]:
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UnsupportedError(f"{path}: metadata {group!r} = {raw!r} is not a JSON list of module classes")
    unknown = sorted(set(names) - set(ANCESTORS))
    if unknown:
        raise UnsupportedError(f"{path}: group {group!r} targets module classes loraforge cannot place "
                               f"({', '.join(unknown)}); known: {', '.join(ANCESTORS)}")
    return tuple(names)


def is_pt_embeddings(path, data) -> bool:
    """A `lora_weight.ti.pt`: a dict of [d] vectors by token."""
    return (str(path).endswith(EMBEDDINGS_PT) and isinstance(data, dict) and bool(data)
            and all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in data.values()))


def pt_lora(path, data) -> CloneofsimoLora:
    """The `.pt` list `data` loaded from `path`: the text encoder's when the name ends in `.text_encoder.pt`; the
    vectors of a `.ti.pt` dict."""
    if isinstance(data, dict):
        return CloneofsimoLora(str(path), "pt", {}, {}, {str(k): v for k, v in data.items()})
    group = "text_encoder" if str(path).endswith(TEXT_ENCODER_PT) else "unet"
    pairs = list(zip(data[::2], data[1::2]))
    return CloneofsimoLora(str(path), "pt", {group: pairs}, {group: None})


# ------------------------------------------------------------------------------------------------------- binding
def walk_order(shapes: dict[str, tuple | None], targets: tuple[str, ...], block_order: tuple[str, ...]) -> list[str]:
    """The module paths lora_diffusion's walk meets, in its order, for the target classes: `shapes` is one part of
    a `ModelTree` (module path -> weight shape, in `named_modules` order)."""
    patterns = [(re.compile(ANCESTORS[c][0]), ANCESTORS[c][1]) for c in dict.fromkeys(targets)]
    found = []
    block_start: dict[str, int] = {}
    for i, path in enumerate(shapes):
        children = next((kids for pattern, kids in patterns if pattern.search(path)), None)
        if children is None:
            continue
        key = (i, 0)
        m = _BLOCK_ROLE.match(path)
        if m:  # a transformer block's targets are met in the order of the diffusers version
            key = (block_start.setdefault(m.group("block"), i), block_order.index(m.group("role")) + 1)
        found.append((key, [f"{path}.{c}" for c in children if shapes.get(f"{path}.{c}") is not None]))
    return [p for _, kids in sorted(found, key=lambda item: item[0]) for p in kids]


def _fits(up: torch.Tensor, down: torch.Tensor, shape: tuple) -> bool:
    if up.dim() != len(shape) or down.dim() != len(shape):
        return False
    kernel_ok = up.dim() == 2 or tuple(up.shape[2:]) == (1, 1)
    return kernel_ok and up.shape[0] == shape[0] and tuple(down.shape[1:]) == tuple(shape[1:])


def bind(lora: CloneofsimoLora, tree: ModelTree) -> tuple[list[AdapterModule], list[str]]:
    """The pairs as kohya-spelled `AdapterModule`s bound to `tree` (alpha = rank: scale 1.0), and notes on how they
    were placed. Raises `ShapeMismatchError` when no walk order places every pair on a module its shapes fit."""
    fam = family_info(tree.family)
    parts = {"unet": "unet", **{te.diffusers: te.part for te in fam.text_encoders}}
    modules: list[AdapterModule] = []
    notes: list[str] = []
    for group, pairs in lora.pairs.items():
        part = parts.get(group)
        if part is None:
            raise UnsupportedError(f"{lora.source}: group {group!r} is no part of an {fam.label} model "
                                   f"({', '.join(parts)})")
        candidates = (lora.targets.get(group),) if lora.targets.get(group) else DEFAULT_TARGETS[group]
        paths, how = _place(lora, group, pairs, tree.modules.get(part, {}), candidates, fam.label)
        notes.append(f"{group}: {len(pairs)} modules of {', '.join(how[0])}, in the order of {how[1]}")
        for i, ((up, down), path) in enumerate(zip(pairs, paths)):
            keys = [f"{group}:{i}:up", f"{group}:{i}:down"] if lora.layout == "safelora" else []
            modules.append(AdapterModule(f"{group}.{path}", {UP: up, DOWN: down}, alpha=float(down.shape[0]),
                                         part=part, path=path, keys=keys))
    return modules, notes


def _place(lora, group, pairs, shapes, candidates, label) -> tuple[list[str], tuple]:
    tried = []
    for targets in candidates:
        for order_label, order in BLOCK_ORDERS.items():
            paths = walk_order(shapes, targets, order)
            if len(paths) != len(pairs):
                tried.append(f"{'/'.join(targets)}: the model has {len(paths)} such modules, the file {len(pairs)} "
                              "pairs")
                break  # the count does not depend on the order
            bad = next((i for i, ((up, down), p) in enumerate(zip(pairs, paths)) if not _fits(up, down, shapes[p])),
                       None)
            if bad is None:
                return paths, (targets, order_label)
            up, down = pairs[bad]
            tried.append(f"{'/'.join(targets)} in the order of {order_label}: pair {bad} (up {tuple(up.shape)}, "
                         f"down {tuple(down.shape)}) does not fit {paths[bad]} {tuple(shapes[paths[bad]])}")
    raise ShapeMismatchError(
        f"{lora.source}: the {group} pairs of this cloneofsimo LoRA fit no walk of the {label} model's modules "
        f"({'; '.join(tried)}). cloneofsimo files store no module names, so they are placed by order: give the "
        "model it was trained on (--base) or its family (--family)"
    )
