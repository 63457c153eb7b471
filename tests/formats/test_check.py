"""check_state_dict / check_file: one line per consumer, unmatched keys by name, broken files flagged, family
detection, and files written by LyCORIS."""

from __future__ import annotations

import pytest
import torch
from .consumer_fixtures import adapter_tensors, lycoris_file, make_file

from loraforge.errors import UnsupportedError
from loraforge.formats.check import check_file, check_state_dict, detect_family

ATTN1_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _sd15_lora() -> dict:
    return dict(make_file("sd15", "lora"))


def test_clean_sd15_kohya_lora():
    report = check_state_dict(_sd15_lora())
    assert report.family == "sd15" and "cross-attention input width 768" in report.family_evidence
    assert report.issues == [] and not report.broken
    assert report.summary() == "ComfyUI 302/302 modules, A1111 302/302, diffusers loads"
    assert all(c.loads and c.applied == 302 and not c.unmatched for c in report.consumers.values())


def test_loha_is_not_loadable_by_diffusers():
    report = check_state_dict(dict(make_file("sd15", "loha")), "sd15")
    assert report.summary() == (
        "ComfyUI 354/354 modules, A1111 354/354, diffusers: cannot load LoHa (use ComfyUI or A1111)"
    )
    assert not report.consumers["diffusers"].loads and not report.broken


def test_sdxl_gaps_are_reported_with_key_names():
    report = check_state_dict(dict(make_file("sdxl", "locon", projection=True)))
    assert report.family == "sdxl"
    a1111 = report.consumers["a1111"]
    assert (a1111.applied, a1111.total) == (1055, 1059)
    text = str(report)
    for key in ("lora_unet_up_blocks_0_upsamplers_0_conv.lora_up.weight", "lora_unet_add_embedding_linear_1.alpha",
                "lora_te2_text_projection.lora_down.weight"):  # fmt: skip
        assert key in a1111.unmatched and key in text
    assert report.consumers["comfyui"].applied == 1059
    diffusers = report.consumers["diffusers"]
    assert diffusers.loads and diffusers.applied == 1057
    assert set(diffusers.skipped) == {"lora_unet_add_embedding_linear_1", "lora_unet_add_embedding_linear_2"}
    assert report.summary() == "ComfyUI 1059/1059 modules, A1111 1055/1059, diffusers loads 1057/1059 modules"


def test_dotted_module_name_is_broken():
    sd = _sd15_lora()
    for suffix in ("lora_up.weight", "lora_down.weight", "alpha"):
        sd[f"{ATTN1_Q[:-5]}.to_q.{suffix}"] = sd.pop(f"{ATTN1_Q}.{suffix}")
    report = check_state_dict(sd, "sd15")
    issue = report.issue("dotted-module-name")
    assert issue and issue.severity == "error" and issue.keys == [ATTN1_Q[:-5] + ".to_q"]
    assert not report.consumers["a1111"].loads  # AssertionError in load_network: the file is lost
    assert "fails to load" in report.summary()


def test_peft_style_keys_are_broken():
    sd = {}
    for module, (out, inn) in {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (320, 320),
        "unet.down_blocks.0.attentions.0.proj_in": (320, 320),
    }.items():
        sd[f"{module}.lora_A.weight"] = torch.randn(4, inn)
        sd[f"{module}.lora_B.weight"] = torch.randn(out, 4)
    report = check_state_dict(sd, "sd15")
    assert report.issue("peft-style-keys").severity == "error"
    assert report.consumers["a1111"].applied == 0 and len(report.consumers["a1111"].unmatched) == 4
    comfy = report.consumers["comfyui"]
    assert comfy.applied == 1 and all("to_q" in k for k in comfy.unmatched)  # proj_in maps, to_q does not
    assert report.consumers["diffusers"].loads  # PEFT keys are diffusers' own format


@pytest.mark.parametrize(
    "mutate,code",
    [
        (lambda t: t.update(dora_scale=torch.ones(320)), "dora-scale-1d"),
        (lambda t: t.pop("alpha"), "alpha-missing"),
        (lambda t: t.update(alpha=torch.tensor([2.0])), "alpha-not-0-dim"),
        (lambda t: t.update({"lora_down.weight": torch.randn(4, 321)}), "shape-mismatch"),
        (lambda t: t.update(lora_magnitude=torch.ones(3)), "unknown-suffix"),
    ],
)
def test_broken_modules_are_flagged(mutate, code):
    sd = _sd15_lora()
    tensors = {s: sd.pop(f"{ATTN1_Q}.{s}") for s in ("lora_up.weight", "lora_down.weight", "alpha")}
    mutate(tensors)
    sd.update({f"{ATTN1_Q}.{s}": v for s, v in tensors.items()})
    report = check_state_dict(sd, "sd15")
    issue = report.issue(code)
    assert issue is not None and issue.severity == "error", str(report)
    assert report.broken and code in str(report)
    if code == "shape-mismatch":
        assert ATTN1_Q in report.consumers["comfyui"].skipped and ATTN1_Q in report.consumers["a1111"].skipped


def test_multi_element_alpha_kills_the_file_in_comfyui_and_a1111():
    sd = _sd15_lora()
    sd[f"{ATTN1_Q}.alpha"] = torch.tensor([2.0, 2.0])
    report = check_state_dict(sd, "sd15")
    assert not report.consumers["comfyui"].loads and not report.consumers["a1111"].loads


def test_output_axis_dora_is_a_warning_with_mis_merged_counts():
    report = check_state_dict(dict(make_file("sd15", "dora_out")), "sd15")
    assert report.issue("dora-output-axis").severity == "warning" and not report.broken
    assert len(report.consumers["comfyui"].wrong) == len(report.consumers["a1111"].wrong) == 354
    assert report.summary() == (
        "ComfyUI 354/354 modules (354 mis-merged), A1111 354/354 (354 mis-merged), diffusers loads (DoRA as plain LoRA)"
    )
    clean = check_state_dict(dict(make_file("sd15", "dora_in")), "sd15")
    assert clean.issues == [] and not clean.consumers["comfyui"].wrong


def test_family_detection():
    assert detect_family(_sd15_lora())[0] == "sd15"
    assert detect_family(dict(make_file("sdxl", "lora", te=False, naming="sgm", unet_scope="attn")))[0] == "sdxl"
    te2 = {f"lora_te_text_model_encoder_layers_0_self_attn_q_proj.{s}": v
           for s, v in adapter_tensors("lora", (1024, 1024), fill=torch.zeros).items()}  # fmt: skip
    assert detect_family(te2) == ("sd2", f"text-encoder width 1024 ({next(iter(te2)).split('.')[0]})")
    self_attn = {k: v for k, v in _sd15_lora().items() if k.startswith(ATTN1_Q)}  # no width evidence
    assert detect_family(self_attn)[0] == "sd15"
    assert detect_family(self_attn, {"ss_base_model_version": "sdxl_base_v1-0"}) == ("sdxl", "metadata")
    report = check_state_dict(_sd15_lora(), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    assert report.family == "sd15" and report.issue("family-metadata")


def test_check_file_reads_safetensors_and_never_unpickles(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in _sd15_lora().items() if k.startswith("lora_unet_down_blocks_1")}
    path = tmp_path / "lora.safetensors"
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora"})
    report = check_file(path)
    assert report.summary() == "ComfyUI 27/27 modules, A1111 27/27, diffusers loads"
    pt = tmp_path / "lora.pt"
    torch.save(sd, pt)
    with pytest.raises(UnsupportedError, match="only .safetensors"):
        check_file(pt)


def test_lycoris_sd15_files():
    lora = check_state_dict(lycoris_file("sd15", "lora"))
    assert lora.summary() == "ComfyUI 266/266 modules, A1111 266/266, diffusers loads" and not lora.broken
    lokr = check_state_dict(lycoris_file("sd15", "lokr"))
    assert lokr.summary() == (
        "ComfyUI 266/266 modules, A1111 266/266, diffusers: cannot load LoKr (use ComfyUI or A1111)"
    )


def test_lycoris_on_a_flattened_transformers5_clip_writes_names_the_uis_do_not_load():
    """LyCORIS on transformers>=5's CLIPTextModel writes lora_te_encoder_layers_* (no text_model_): only diffusers
    loads those text-encoder modules."""
    report = check_state_dict(lycoris_file("sd15", "lora", flatten_te1=True))
    comfy, a1111, diffusers = (report.consumers[k] for k in ("comfyui", "a1111", "diffusers"))
    assert comfy.applied == a1111.applied == 194 and diffusers.applied == 266
    assert any(k.startswith("lora_te_encoder_layers_0_self_attn_q_proj.") for k in comfy.unmatched)


def test_lycoris_sdxl_diffusers_names_mostly_accepted():
    report = check_state_dict(lycoris_file("sdxl", "lora"))
    assert report.family == "sdxl"
    assert report.consumers["comfyui"].applied == report.consumers["comfyui"].total == 990
    assert report.consumers["a1111"].applied == 988  # add_embedding.linear_1/2 have no A1111 rule
    assert report.consumers["diffusers"].applied == 988  # add_embedding converts to a name PEFT cannot find


def test_lora_a_b_under_kohya_names():
    sd = _sd15_lora()
    sd[f"{ATTN1_Q}.lora_B.weight"] = sd.pop(f"{ATTN1_Q}.lora_up.weight")
    sd[f"{ATTN1_Q}.lora_A.weight"] = sd.pop(f"{ATTN1_Q}.lora_down.weight")
    report = check_state_dict(sd, "sd15")
    assert report.issue("lora-A-B-names").keys == [ATTN1_Q]
    assert report.consumers["comfyui"].applied == 302 and not report.consumers["comfyui"].wrong
    assert ATTN1_Q in report.consumers["a1111"].wrong  # alpha 2 with rank 4 is ignored
    assert not report.consumers["diffusers"].loads
    assert "not been correctly renamed" in report.consumers["diffusers"].reason


def test_tucker_lokr_conv_is_not_applied_by_comfyui():
    module = "lora_unet_down_blocks_0_resnets_0_conv1"  # 320 -> 320, 3x3; 320 = 16 x 20
    sd = {f"{module}.lokr_w1": torch.randn(16, 16), f"{module}.lokr_t2": torch.randn(2, 2, 3, 3),
          f"{module}.lokr_w2_a": torch.randn(2, 20), f"{module}.lokr_w2_b": torch.randn(2, 20),
          f"{module}.alpha": torch.tensor(1.0)}  # fmt: skip
    report = check_state_dict(sd, "sd15")
    assert not report.broken
    assert report.consumers["comfyui"].applied == 0 and "view size" in report.consumers["comfyui"].skipped[module]
    assert report.consumers["a1111"].applied == 1


def test_cli_check_against_a_models_own_architecture(make_config, tiny_dirs, capsys):
    from loraforge.cli import main
    from loraforge.training.trainer import Trainer

    result = Trainer(make_config("sd15", **{"training.max_train_steps": 1})).run()
    assert main(["check", str(result.files.kohya), "--model", str(tiny_dirs["sd15"])]) == 0
    out = capsys.readouterr().out
    assert "ComfyUI 48/48 modules, A1111 48/48, diffusers loads" in out
    # with no flags the file's own metadata names the tiny model; against the full-size family it cannot fit
    assert main(["check", str(result.files.kohya)]) == 0
    assert "ComfyUI 48/48 modules, A1111 48/48, diffusers loads" in capsys.readouterr().out
    assert main(["check", str(result.files.kohya), "--family", "sd15"]) == 1
