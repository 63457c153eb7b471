"""The FLUX.1 weight-name table (`families.flux`) against the real diffusers transformer and diffusers' own converter."""

import torch

from loraforge.families.architectures import COMPONENTS, FLUX_SCHNELL_OVERRIDES
from loraforge.families.flux import (
    diffusers_module_origin,
    diffusers_to_original,
    norm_modules,
    original_to_diffusers,
    transformer_modules,
)


def _meta_params(config):
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _table_params(config):
    """diffusers parameter -> (original module, first row, rows) as the table says."""
    out = {}
    for fused in transformer_modules(config).values():
        for name, start, rows in fused.parts:
            for param in ("weight", "bias"):
                assert f"{name}.{param}" not in out, f"{name} covered twice"
                out[f"{name}.{param}"] = (fused.original, start, rows)
    for original, name in norm_modules(config).items():
        assert f"{name}.weight" not in out
        out[f"{name}.weight"] = (original, 0, None)
    return out


def test_table_covers_every_full_size_weight_once_with_matching_rows():
    config = COMPONENTS["flux"]["transformer"]
    params = _meta_params(config)
    table = _table_params(config)
    assert set(table) == set(params)  # every diffusers weight exactly once, nothing invented
    for name, (original, start, rows) in table.items():
        if rows is not None:
            assert params[name][0] == rows, name
    fused = transformer_modules(config)
    assert len(fused) == 7 + 2 + 1 + 19 * 10 + 38 * 3
    qkv = fused["single_blocks.37.linear1"]
    assert [p[0] for p in qkv.parts] == [f"single_transformer_blocks.37.{n}" for n in
                                         ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    assert [(p[1], p[2]) for p in qkv.parts] == [(0, 3072), (3072, 3072), (6144, 3072), (9216, 12288)]
    assert fused["final_layer.adaLN_modulation.1"].swap_halves
    assert sum(m.swap_halves for m in fused.values()) == 1
    assert diffusers_module_origin("transformer_blocks.18.attn.add_v_proj", config)[0].original == \
        "double_blocks.18.txt_attn.qkv"


def test_schnell_has_no_guidance_embedding():
    config = dict(COMPONENTS["flux"]["transformer"], **FLUX_SCHNELL_OVERRIDES.get("transformer", {}))
    config["guidance_embeds"] = False
    params = _meta_params(config)
    assert set(_table_params(config)) == set(params)
    assert not any(k.startswith("guidance_in") for k in transformer_modules(config))


def _rows_only_original(config, columns=2):
    """An original-layout state dict with the real row counts but `columns` input features (diffusers' converter
    only cuts rows, and hard-codes the full-size width)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for fused in transformer_modules(config).values():
        sd[f"{fused.original}.weight"] = torch.randn(fused.rows, columns, generator=g)
        sd[f"{fused.original}.bias"] = torch.randn(fused.rows, generator=g)
    for original in norm_modules(config):
        sd[f"{original}.scale"] = torch.randn(128, generator=g)
    return sd


def test_original_to_diffusers_matches_diffusers_single_file_converter():
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    config = dict(COMPONENTS["flux"]["transformer"], num_layers=2, num_single_layers=2)
    original = _rows_only_original(config)
    ours, unused = original_to_diffusers(original, config)
    assert unused == []
    theirs = convert_flux_transformer_checkpoint_to_diffusers(
        {f"model.diffusion_model.{k}": v.clone() for k, v in original.items()})
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    back, unused = diffusers_to_original(ours, config)
    assert unused == [] and set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key
