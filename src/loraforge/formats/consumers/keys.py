"""Consumer-neutral view of a LoRA-family state dict: split keys into module + tensor suffix, group per module, and
name the adapter a module's suffix set describes (formats.md §3).

A key is `<module><sep><suffix>` where `sep` is "." for every suffix except diffusers' old attention-processor form
(`...processor.to_q_lora.up.weight`, suffix `_lora.up.weight`). The split uses the longest known suffix, so dotted
module names are recognised as such instead of being cut at the first dot the way A1111 does.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConsumerMergeError(RuntimeError):
    """A consumer cannot compute a module's weight (it logs or raises and leaves the layer unpatched)."""


# (up, down) name pairs of plain LoRA, in the order ComfyUI tries them.
LORA_PAIRS: tuple[tuple[str, str], ...] = (
    ("lora_up.weight", "lora_down.weight"),  # kohya / LyCORIS
    ("_lora.up.weight", "_lora.down.weight"),  # old diffusers attention processors
    ("lora_B.weight", "lora_A.weight"),  # PEFT
    ("lora.up.weight", "lora.down.weight"),  # diffusers
    ("lora_B", "lora_A"),  # Mochi
    ("lora_linear_layer.up.weight", "lora_linear_layer.down.weight"),  # transformers / old diffusers TE
    ("lora_B.default.weight", "lora_A.default.weight"),  # Qwen
)
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2")
GLORA = ("a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight")
OFT = ("oft_blocks", "oft_diag", "rescale")
IA3 = ("weight", "on_input")
OTHER = (
    "alpha", "dora_scale", "lora_mid.weight", "scale", "bias", "diff", "diff_b", "set_weight", "reshape_weight",
    "w_norm", "b_norm", "lora_magnitude_vector",
)  # fmt: skip

_ALL = {s for pair in LORA_PAIRS for s in pair} | set(LOHA + LOKR + GLORA + OFT + IA3 + OTHER)
KNOWN_SUFFIXES: tuple[str, ...] = tuple(sorted(_ALL, key=len, reverse=True))  # longest first
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
PEFT_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.", "transformer.", "base_model.model.", "diffusion_model.")


def join(module: str, suffix: str) -> str:
    """Inverse of `split_key`."""
    return module + suffix if suffix.startswith("_lora.") else f"{module}.{suffix}"


def split_key(key: str) -> tuple[str, str, bool]:
    """(module, suffix, known): the longest known tensor suffix, or a cut at the first "." when none fits."""
    for suffix in KNOWN_SUFFIXES:
        sep_suffix = suffix if suffix.startswith("_lora.") else "." + suffix
        if key.endswith(sep_suffix) and len(key) > len(sep_suffix):
            return key[: -len(sep_suffix)], suffix, True
    module, _, suffix = key.partition(".")
    return module, suffix, False


@dataclass
class FileModule:
    """One module of a file: its tensors by suffix, and the keys whose suffix is not a known one."""

    name: str
    tensors: dict = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # full keys

    @property
    def kind(self) -> str:
        return adapter_kind(self.tensors)


def group_modules(keys_or_sd) -> dict[str, FileModule]:
    """module name -> FileModule; `keys_or_sd` is a state dict (or any mapping of key -> tensor)."""
    out: dict[str, FileModule] = {}
    for key, value in keys_or_sd.items():
        module, suffix, known = split_key(key)
        entry = out.setdefault(module, FileModule(module))
        if known:
            entry.tensors[suffix] = value
        else:
            entry.unknown.append(key)
    return out


def lora_pair(tensors) -> tuple[str, str] | None:
    for up, down in LORA_PAIRS:
        if up in tensors or down in tensors:
            return up, down
    return None


def adapter_kind(tensors) -> str:
    """lora, locon_tucker, loha, lokr, glora, oft, boft, ia3, full, norm, or "none" (alpha/dora_scale alone)."""
    if any(k in tensors for k in LOHA[:4]):
        return "loha"
    if any(k in tensors for k in LOKR):
        return "lokr"
    if "a1.weight" in tensors:
        return "glora"
    if "oft_blocks" in tensors or "oft_diag" in tensors:
        blocks = tensors.get("oft_blocks")
        return "boft" if blocks is not None and blocks.dim() == 4 else "oft"
    if lora_pair(tensors):
        return "locon_tucker" if "lora_mid.weight" in tensors else "lora"
    if "diff" in tensors or "set_weight" in tensors:
        return "full"
    if "w_norm" in tensors:
        return "norm"
    if "weight" in tensors:
        return "ia3"
    return "none"




def dora_axis(dora_scale, weight_shape) -> str:
    """"output" ([out,1,...]), "input" ([1,in,...]), "1d" or "bad" for a `dora_scale` against the target shape."""
    shape = tuple(dora_scale.shape)
    if len(shape) <= 1:
        return "1d"
    ones = (1,) * (len(weight_shape) - 1)
    if len(shape) == len(weight_shape):
        if shape == (weight_shape[0], *ones):
            return "output"
        if shape == (1, weight_shape[1], *ones[1:]):
            return "input"
    return "bad"


def _prod(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def delta_shape(tensors) -> tuple[int, int] | None:
    """(out, in·kh·kw) of the ΔW a module's tensors rebuild to, from shapes only; None when not computable."""
    try:
        pair = lora_pair(tensors)
        kind = adapter_kind(tensors)
        if kind in ("lora", "locon_tucker") and pair and pair[0] in tensors and pair[1] in tensors:
            up, down = tensors[pair[0]].shape, tensors[pair[1]].shape
            mid = tensors.get("lora_mid.weight")
            inner = down[1] * _prod(mid.shape[2:]) if mid is not None else _prod(down[1:])
            return up[0], inner
        if kind == "loha":
            a, b = tensors["hada_w1_a"].shape, tensors["hada_w1_b"].shape
            if "hada_t1" in tensors:
                return a[1], b[1] * _prod(tensors["hada_t1"].shape[2:])
            return a[0], _prod(b[1:])
        if kind == "lokr":
            w1 = tensors.get("lokr_w1")
            a, c = w1.shape if w1 is not None else (tensors["lokr_w1_a"].shape[0], tensors["lokr_w1_b"].shape[1])
            w2 = tensors.get("lokr_w2")
            if w2 is not None:
                b, d = w2.shape[0], _prod(w2.shape[1:])
            elif "lokr_t2" in tensors:
                b = tensors["lokr_w2_a"].shape[1]
                d = tensors["lokr_w2_b"].shape[1] * _prod(tensors["lokr_t2"].shape[2:])
            else:
                b, d = tensors["lokr_w2_a"].shape[0], _prod(tensors["lokr_w2_b"].shape[1:])
            return a * b, c * d
        if kind == "full" and "diff" in tensors:
            s = tensors["diff"].shape
            return s[0], _prod(s[1:])
    except (KeyError, IndexError, ValueError):
        return None
    return None
