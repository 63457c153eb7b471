"""`loraforge resize`, `merge loras`, `merge into-model` and `extract` with FLUX.1 files and models, on the embedded
tiny FLUX: resize keeps ΔW at full rank and gives the best rank-r approximation of each (fused) layer below it;
concat adds the ΔWs; merging changes the transformer by exactly ΔW (diffusers folder and BFL single file) and equals
diffusers' own LoRA loading; extract recovers a known low-rank ΔW; FLUX and SD files do not mix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loraforge.adapters.math import raw_delta
from loraforge.cli import main
from loraforge.errors import FamilyMismatchError, ToolError
from loraforge.formats.flux_lora import flux_diffusers_state_dict, flux_metadata, read_flux_lora
from loraforge.formats.flux_single_file import read_flux_transformer, save_flux_transformer
from loraforge.models.tiny import tiny_model_dir
from loraforge.tools.common import LoraSpec
from loraforge.tools.extract import extract_lora
from loraforge.tools.merge import merge_into_model
from loraforge.tools.merge_loras import merge_loras
from loraforge.tools.resize import resize_lora
from loraforge.tools.svd import RankRule

INNER, MLP = 32, 128  # the tiny FLUX's attention and MLP widths
QKV = [f"transformer_blocks.0.attn.to_{x}" for x in "qkv"]
LINEAR1 = [f"single_transformer_blocks.1.attn.to_{x}" for x in "qkv"] + ["single_transformer_blocks.1.proj_mlp"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def flux():
    """The embedded tiny FLUX (folder, config, transformer weights, CLIP-L)."""
    from loraforge.config import load_config
    from loraforge.models.loading import load_model

    folder = tiny_model_dir("flux")
    model = load_model(load_config(None, ["model.family='flux'"]).model)
    config = {k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")}
    return folder, config, model


def _kohya_sd(seed: int, rank: int = 4) -> dict:
    """A kohya FLUX file as sd-scripts writes it: fused qkv / linear1 modules (one down), a plain layer, the final
    modulation (halves swapped) and CLIP-L attention."""
    g = torch.Generator().manual_seed(seed)
    modules = {"lora_unet_double_blocks_0_img_attn_qkv": (3 * INNER, INNER),
               "lora_unet_single_blocks_1_linear1": (3 * INNER + MLP, INNER),
               "lora_unet_double_blocks_1_img_mlp_0": (MLP, INNER),
               "lora_unet_final_layer_adaLN_modulation_1": (2 * INNER, INNER)}
    modules.update({f"lora_te1_text_model_encoder_layers_0_self_attn_{x}_proj": (32, 32) for x in "qkvo"})
    modules["lora_te1_text_model_encoder_layers_0_self_attn_out_proj"] = modules.pop(
        "lora_te1_text_model_encoder_layers_0_self_attn_o_proj")
    sd = {}
    for i, (name, (out, inp)) in enumerate(modules.items()):
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, inp, generator=g) * 0.3
        sd[f"{name}.lora_up.weight"] = torch.randn(out, rank, generator=g) * 0.3
        sd[f"{name}.alpha"] = torch.tensor(float(1 + i % 3))
    return sd


def _write(path, sd, tiny_meta: bool = True):
    meta = {**flux_metadata(), "ss_network_dim": "4"}
    if tiny_meta:
        meta["loraforge_base_model"] = "tiny-flux"
    save_file(sd, str(path), metadata=meta)
    return path


def _header(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def _deltas(path, config) -> dict:
    """(part, diffusers path) -> ΔW of a FLUX LoRA file, read back as consumers' reader does."""
    lora = read_flux_lora(load_file(str(path)), _header(path), config)
    return {t: raw_delta(m) * m.scale for t, m in lora.by_target().items()}


def _fused(deltas: dict, names: list[str]) -> torch.Tensor:
    """A fused layer's ΔW: its parts' rows stacked (zero rows for a part the file leaves alone)."""
    first = next(deltas[("unet", n)] for n in names if ("unet", n) in deltas)
    sizes = {n: (INNER if "to_" in n else MLP) for n in names}
    return torch.cat([deltas.get(("unet", n), torch.zeros(sizes[n], first.shape[1])) for n in names])


def _assert_same(got: dict, want: dict, atol=1e-5):
    assert set(got) == set(want)
    for target, delta in want.items():
        torch.testing.assert_close(got[target], delta, atol=atol, rtol=1e-4, msg=str(target))


# ---------------------------------------------------------------------------------------------------------- resize
def test_resize_to_full_rank_keeps_every_delta_and_the_kohya_layout(flux, tmp_path):
    _, config, _ = flux
    src = _write(tmp_path / "in.safetensors", _kohya_sd(0))
    result = resize_lora(src, tmp_path / "full.safetensors", RankRule(rank=4))
    out = load_file(str(result.output))
    # still one module for the fused layers, at the rank asked for (not 3 × 4 or 4 × 4)
    assert out["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (4, INNER)
    assert out["lora_unet_single_blocks_1_linear1.lora_up.weight"].shape == (3 * INNER + MLP, 4)
    meta = _header(result.output)
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "flux1"
    assert meta["loraforge_resize"] == "rank 4" and result.check.startswith("ComfyUI 8/8 modules")  # CLIP-L checked on the tiny text encoder
    assert "not checked" not in result.check  # the tiny CLIP-L modules are checked against the tiny text encoder
    _assert_same(_deltas(result.output, config), _deltas(src, config))


def test_resize_to_a_lower_rank_is_the_best_approximation_of_each_layer(flux, tmp_path):
    _, config, _ = flux
    src = _write(tmp_path / "in.safetensors", _kohya_sd(1), tiny_meta=False)  # told tiny by its width
    result = resize_lora(src, tmp_path / "r2.safetensors", RankRule(rank=2))
    assert _header(result.output)["ss_network_dim"] == "2"
    assert _header(result.output)["loraforge_base_model"] == "tiny-flux"
    want, got = _deltas(src, config), _deltas(result.output, config)
    layers = [QKV, LINEAR1, ["transformer_blocks.1.ff.net.0.proj"], ["norm_out.linear"]]
    for names in layers:
        full, cut = _fused(want, names), _fused(got, names)
        s = torch.linalg.svdvals(full.double())
        best = float(s[2:].square().sum().sqrt())  # Eckart–Young: the error of the best rank-2 approximation
        assert float((full.double() - cut.double()).norm()) == pytest.approx(best, rel=1e-4), names
        assert torch.linalg.matrix_rank(cut.double(), atol=1e-6) == 2
    # a dynamic rule: sv_fro keeps the smallest rank reaching the share, per layer
    dyn = resize_lora(src, tmp_path / "fro.safetensors", RankRule(rank=4, method="sv_fro", param=0.9))
    assert all(m.fro_share >= 0.9 - 1e-9 for m in dyn.modules)


def test_resize_a_diffusers_file_stays_diffusers(flux, tmp_path):
    _, config, _ = flux
    src = _write(tmp_path / "in.safetensors", _kohya_sd(2))
    lora = read_flux_lora(load_file(str(src)), _header(src), config)
    sd, header = flux_diffusers_state_dict(lora.modules.values())
    diffusers = tmp_path / "diffusers.safetensors"
    save_file(sd, str(diffusers), metadata={**header, "loraforge_base_model": "tiny-flux"})
    result = resize_lora(diffusers, tmp_path / "out", RankRule(rank=4))
    assert result.output.name == "pytorch_lora_weights.safetensors"
    keys = load_file(str(result.output))
    assert "transformer.transformer_blocks.0.attn.to_k.lora_A.weight" in keys
    assert not any(k.startswith("lora_unet") for k in keys)
    _assert_same(_deltas(result.output, config), _deltas(src, config))


# ----------------------------------------------------------------------------------------------------- merge loras
def test_merge_loras_concat_adds_the_deltas_and_svd_rerank(flux, tmp_path):
    _, config, _ = flux
    a = _write(tmp_path / "a.safetensors", _kohya_sd(3))
    b_sd = {k: v for k, v in _kohya_sd(4, rank=2).items() if "linear1" not in k}  # B leaves linear1 alone
    b = _write(tmp_path / "b.safetensors", b_sd)
    result = merge_loras([(str(a), 1.0), (str(b), -0.5)], tmp_path / "ab.safetensors", mode="concat")
    out = load_file(str(result.output))
    assert out["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (6, INNER)  # 4 + 2
    da, db = _deltas(a, config), _deltas(b, config)
    want = {t: da.get(t, 0) - 0.5 * db.get(t, 0) for t in set(da) | set(db)}
    _assert_same(_deltas(result.output, config), want)
    svd = merge_loras([(str(a), 1.0), (str(b), -0.5)], tmp_path / "svd.safetensors", mode="svd",
                      rule=RankRule(rank=6))
    _assert_same(_deltas(svd.output, config), want, atol=1e-4)


def test_flux_and_sd_files_do_not_mix(tmp_path):
    flux_file = _write(tmp_path / "flux.safetensors", _kohya_sd(5))
    sd_file = tmp_path / "sd.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 32), f"{name}.lora_up.weight": torch.zeros(32, 2)},
              str(sd_file))
    with pytest.raises(FamilyMismatchError, match=r"cannot merge FLUX.1 and Stable Diffusion.*flux.safetensors "
                                                  r"\(FLUX.1\).*sd.safetensors \(not FLUX.1\)"):
        merge_loras([(str(flux_file), 1.0), (str(sd_file), 1.0)], tmp_path / "m.safetensors")
    with pytest.raises(FamilyMismatchError, match="FLUX.1 LoRA, but the model .* is not FLUX.1"):
        merge_into_model(None, [LoraSpec(str(flux_file))], tmp_path / "x", family="sd15")
    with pytest.raises(ToolError, match="Stable Diffusion LoRAs are written in the kohya layout"):
        resize_lora(sd_file, tmp_path / "r.safetensors", RankRule(rank=1), to="diffusers")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------- merge into model
def _transformer_inputs():
    g = torch.Generator().manual_seed(7)
    return dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.4]),
                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]), return_dict=False)


def test_merge_into_a_diffusers_folder_adds_exactly_delta_and_matches_diffusers_lora_loading(flux, tmp_path):
    from diffusers import FluxPipeline

    folder, config, model = flux
    src = _write(tmp_path / "lora.safetensors", _kohya_sd(6))
    out = merge_into_model(str(folder), [LoraSpec(str(src), unet=0.8, te=0.5)], tmp_path / "merged")
    merged = FluxPipeline.from_pretrained(str(out), local_files_only=True)
    base_t, base_te = model.unet.state_dict(), model.text_encoders[0].state_dict()
    new_t, new_te = merged.transformer.state_dict(), merged.text_encoder.state_dict()
    deltas = _deltas(src, config)
    for (part, path), delta in deltas.items():
        base, new, s = (base_t, new_t, 0.8) if part == "unet" else (base_te, new_te, 0.5)
        torch.testing.assert_close(new[f"{path}.weight"] - base[f"{path}.weight"], s * delta, atol=1e-5, rtol=1e-4)
    touched = {f"{p}.weight" for part, p in deltas if part == "unet"}
    assert all(torch.equal(new_t[k], v) for k, v in base_t.items() if k not in touched)
    # diffusers' own LoRA loading of the same file (its diffusers layout) at the same strength gives the same output
    lora = read_flux_lora(load_file(str(src)), _header(src), config)
    sd, header = flux_diffusers_state_dict([m for m in lora.modules.values() if m.part == "unet"])
    save_file(sd, str(tmp_path / "diffusers.safetensors"), metadata=header)
    reference = FluxPipeline.from_pretrained(str(folder), local_files_only=True)
    reference.load_lora_weights(str(tmp_path / "diffusers.safetensors"), adapter_name="x")
    reference.set_adapters(["x"], [0.8])
    with torch.no_grad():
        want = reference.transformer(**_transformer_inputs())[0]
        got = merged.transformer(**_transformer_inputs())[0]
        plain = model.unet(**_transformer_inputs())[0]
    assert not torch.allclose(plain, want, atol=1e-3)  # the LoRA changes the output
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_merge_into_a_bfl_single_file_writes_the_same_kind_of_file(flux, tmp_path):
    _, config, model = flux
    base = save_flux_transformer(model.unet.state_dict(), tmp_path / "flux1-tiny.safetensors", config,
                                 prefix="model.diffusion_model.")  # no metadata: told tiny by its width
    src = _write(tmp_path / "lora.safetensors", _kohya_sd(7), tiny_meta=False)
    with pytest.raises(Exception, match="text encoders.*--te-scale 0"):
        merge_into_model(str(base), [LoraSpec(str(src))], tmp_path / "m.safetensors")
    out = merge_into_model(str(base), [LoraSpec(str(src), te=0.0)], tmp_path / "m.safetensors")
    assert "model.diffusion_model.double_blocks.0.img_attn.qkv.weight" in load_file(str(out))
    before, after = read_flux_transformer(base, config), read_flux_transformer(out, config)
    deltas = {p: d for (part, p), d in _deltas(src, config).items() if part == "unet"}
    assert ("transformer_blocks.0.attn.to_v") in deltas and "norm_out.linear" in deltas
    for key, value in before.items():
        path = key.removesuffix(".weight")
        want = value + deltas[path] if key.endswith(".weight") and path in deltas else value
        torch.testing.assert_close(after[key], want, atol=1e-5, rtol=1e-4, msg=key)


# ---------------------------------------------------------------------------------------------------------- extract
def _tuned_file(model, config, path, seed=8):
    """The tiny transformer + a known ΔW: rank 3 on the whole fused qkv of block 0, rank 2 on proj_mlp and the final
    modulation. Returns the file and ΔW by diffusers path."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in model.unet.state_dict().items()}
    qkv = torch.randn(3 * INNER, 3, generator=g) @ torch.randn(3, INNER, generator=g) * 0.1
    deltas = {name: qkv[i * INNER:(i + 1) * INNER] for i, name in enumerate(QKV)}
    for name, rows in (("single_transformer_blocks.0.proj_mlp", MLP), ("norm_out.linear", 2 * INNER)):
        deltas[name] = torch.randn(rows, 2, generator=g) @ torch.randn(2, INNER, generator=g) * 0.1
    for name, delta in deltas.items():
        sd[f"{name}.weight"] += delta
    return save_flux_transformer(sd, path, config), deltas


def test_extract_recovers_a_known_low_rank_delta(flux, tmp_path):
    _, config, model = flux
    tuned, deltas = _tuned_file(model, config, tmp_path / "tuned.safetensors")
    result = extract_lora(None, str(tuned), tmp_path / "x.safetensors", RankRule(rank=4), family="flux")
    out = load_file(str(result.output))
    assert out["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (4, INNER)  # the fused layer whole
    assert "ComfyUI 3/3" in result.check
    got = _deltas(result.output, config)
    want = {("unet", k): v for k, v in deltas.items()}
    # the other parts of a fused layer come out as numerically zero rows (the SVD's), which the reader keeps
    assert all(float(got[t].abs().max()) < 1e-6 for t in set(got) - set(want))
    _assert_same({t: got[t] for t in want}, want)
    # diffusers layout: one module per diffusers layer
    result = extract_lora(None, str(tuned), tmp_path / "xd", RankRule(rank=2), family="flux", to="diffusers")
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in load_file(str(result.output))
    got = _deltas(result.output, config)
    _assert_same({k: v for k, v in got.items() if k[1] not in QKV},
                 {("unet", k): v for k, v in deltas.items() if k not in QKV}, atol=1e-5)


def test_extract_between_folders_covers_clip_l(flux, tmp_path):
    import copy

    folder, config, model = flux
    g = torch.Generator().manual_seed(10)
    delta = torch.randn(32, 2, generator=g) @ torch.randn(2, 32, generator=g) * 0.1
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.text_encoders[0].get_submodule("encoder.layers.0.self_attn.q_proj").weight += delta
        tuned.unet.get_submodule("transformer_blocks.1.attn.to_out.0").weight += 2 * delta
        tuned.unet.get_submodule("transformer_blocks.1.attn.to_out.0").bias += 1.0  # no LoRA carries a bias
    tuned.pipeline().save_pretrained(tmp_path / "tuned")
    result = extract_lora(str(folder), str(tmp_path / "tuned"), tmp_path / "x.safetensors", RankRule(rank=2))
    assert "transformer.transformer_blocks.1.attn.to_out.0.bias" in result.skipped
    _assert_same(_deltas(result.output, config), {("te1", "encoder.layers.0.self_attn.q_proj"): delta,
                                                  ("unet", "transformer_blocks.1.attn.to_out.0"): 2 * delta})


# -------------------------------------------------------------------------------------------------------------- CLI
def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli(flux, tmp_path, capsys):
    folder, config, model = flux
    a = _write(tmp_path / "a.safetensors", _kohya_sd(9))
    code, out, _ = _run(capsys, "resize", a, "-o", tmp_path / "r.safetensors", "--rank", "2", "--to", "comfyui")
    assert code == 0 and "double_blocks.0.img_attn.qkv" in out and "check: ComfyUI 8/8" in out
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight" in load_file(str(tmp_path / "r.safetensors"))
    code, out, _ = _run(capsys, "merge", "loras", a, f"{tmp_path / 'r.safetensors'}:0.5", "-o", tmp_path / "m.safetensors")
    assert code == 0 and "concat: 8 modules, rank 6" in out
    code, out, _ = _run(capsys, "merge", "into-model", folder, "--lora", a, "-o", tmp_path / "merged")
    assert code == 0 and (tmp_path / "merged" / "transformer" / "config.json").is_file()
    tuned, _ = _tuned_file(model, config, tmp_path / "tuned.safetensors")
    code, out, _ = _run(capsys, "extract", "--base", folder, "--tuned", tuned, "-o", tmp_path / "x.safetensors",
                        "--rank", "3")
    assert code == 0 and "extracted 3 modules" in out and "not extracted" in out  # the text encoders
    sd_file = tmp_path / "sd.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 32), f"{name}.lora_up.weight": torch.zeros(32, 2)},
              str(sd_file))
    code, _, err = _run(capsys, "merge", "loras", a, sd_file, "-o", tmp_path / "mix.safetensors")
    assert code == 2 and "cannot merge FLUX.1 and Stable Diffusion LoRA files" in err and "Traceback" not in err


def test_sample_with_a_flux_lora_equals_the_merged_model(flux, tmp_path):
    """`loraforge sample --lora` on FLUX: the file is read in its own layout against the model's transformer and
    applied at the given strengths; the image equals the one from the model with the LoRA merged in."""
    from loraforge.tools.sample import build_requests, sample

    folder, config, model = flux
    src = _write(tmp_path / "lora.safetensors", _kohya_sd(6))
    merged = merge_into_model(str(folder), [LoraSpec(str(src), unet=0.8, te=0.5)], tmp_path / "merged")
    reqs = build_requests("a photo of a red robot", steps=2, width=64, height=64, seed=3)
    with_lora = sample(None, reqs, tmp_path / "a", family="flux", loras=[LoraSpec(str(src), unet=0.8, te=0.5)])
    baked = sample(str(merged), reqs, tmp_path / "b", family="flux")
    plain = sample(None, reqs, tmp_path / "c", family="flux")
    a, b, c = (np.asarray(Image.open(p[0]), dtype=np.int16) for p in (with_lora, baked, plain))
    assert np.abs(a - b).max() <= 1 and np.abs(a - c).max() > 8  # the LoRA changed the image, as merging it does
    assert "<lora:lora:0.5:0.8>" in Image.open(with_lora[0]).text["parameters"]
