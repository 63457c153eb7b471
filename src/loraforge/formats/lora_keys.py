"""The LoRA-file reader's key parser: split each key into module name + tensor suffix and spell the suffix the kohya
/ LyCORIS way `loraforge.adapters` computes with.

A key is `<module><sep><suffix>`, `sep` being "." except for diffusers' old attention-processor form
(`...processor.to_q_lora.up.weight`). The longest known suffix wins, so dotted module names (diffusers / PEFT) stay
whole. This parser is the production one; the consumer models (`formats.consumers.keys`) keep their own, so that the
checker does not share a parsing bug with the reader it checks.
"""

from __future__ import annotations

from ..adapters import AdapterModule
from ..adapters.module import LOHA, LOKR

UP, DOWN = "lora_up.weight", "lora_down.weight"

# file spelling -> the kohya / LyCORIS spelling (formats.md §3, diffusers.md §3)
SPELLINGS = {
    "lora_up.weight": UP, "lora_down.weight": DOWN,  # kohya / LyCORIS
    "_lora.up.weight": UP, "_lora.down.weight": DOWN,  # old diffusers attention processors
    "lora_B.weight": UP, "lora_A.weight": DOWN,  # PEFT
    "lora.up.weight": UP, "lora.down.weight": DOWN,  # diffusers
    "lora_B": UP, "lora_A": DOWN,  # Mochi
    "lora_linear_layer.up.weight": UP, "lora_linear_layer.down.weight": DOWN,  # transformers / old diffusers TE
    "lora_B.default.weight": UP, "lora_A.default.weight": DOWN,  # Qwen
    "lora_magnitude_vector": "dora_scale",  # PEFT DoRA (1-D, per output row)
}  # fmt: skip
KEPT = LOHA + ("hada_t1", "hada_t2") + LOKR + (
    "lora_mid.weight", "dora_scale", "alpha", "diff", "diff_b", "w_norm", "b_norm",
    "a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight",  # GLoRA
    "oft_blocks", "oft_diag", "rescale",  # OFT / BOFT
    "weight", "on_input",  # IA3
    "scale", "bias", "set_weight", "reshape_weight",
)  # fmt: skip
_SUFFIXES = tuple(sorted(set(SPELLINGS) | set(KEPT), key=len, reverse=True))  # longest first


def split_key(key: str) -> tuple[str, str | None]:
    """(module, suffix in kohya spelling), or (the key cut at its first ".", None) when no known suffix ends it."""
    for suffix in _SUFFIXES:
        sep_suffix = suffix if suffix.startswith("_lora.") else "." + suffix
        if key.endswith(sep_suffix) and len(key) > len(sep_suffix):
            return key[: -len(sep_suffix)], SPELLINGS.get(suffix, suffix)
    return key.partition(".")[0], None


def group_keys(sd) -> tuple[dict[str, AdapterModule], list[str]]:
    """(module name -> `AdapterModule` with its tensors in kohya spelling, `alpha` and `diff_b` among them, and the
    keys they came from; keys without a known suffix)."""
    modules: dict[str, AdapterModule] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        name, suffix = split_key(key)
        if suffix is None:
            unknown.append(key)
            continue
        module = modules.setdefault(name, AdapterModule(name, {}))
        module.tensors[suffix] = value
        module.keys.append(key)
    return modules, unknown
