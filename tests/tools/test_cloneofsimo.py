"""cloneofsimo/lora (`lora_diffusion`) files: a safelora and the `.pt` lists, written here per its format from the
tiny SD 1.5 (its walk: every module of a target class in `model.modules()` order, then its Linear descendants in
`named_modules()` order), convert to kohya files whose ΔW on the model is up @ down (alpha = rank), with the
pivotal-tuning vectors as an embedding file; `.pt` only with --allow-pickle."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loraforge.cli import main
from loraforge.errors import FamilyMismatchError, PickleRefusedError, ShapeMismatchError, ToolError, UnsupportedError
from loraforge.formats.file_kind import require_kind
from loraforge.tools.common import LoraSpec, apply_lora_files
from loraforge.tools.convert import convert
from loraforge.tools.inspect import inspect_file

UNET_TARGETS = ["CrossAttention", "Attention", "GEGLU"]
TEXT_TARGETS = ["CLIPAttention"]


def _walk(model, targets, kinds=(torch.nn.Linear,)) -> list[tuple[str, torch.nn.Module]]:
    """lora_diffusion's order, on the modules themselves (class names, not paths)."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for ancestor in model.modules():
        if type(ancestor).__name__ in targets:
            for rel, child in ancestor.named_modules():
                if isinstance(child, kinds):
                    out.append((f"{names[ancestor]}.{rel}", child))
    return out


def _legacy(walk):
    """The order of diffusers in cloneofsimo's time: a transformer block declared ff between attn1 and attn2."""
    out, i = [], 0
    while i < len(walk):
        if walk[i][0].endswith("attn1.to_q"):  # attn1 (4 Linear), attn2 (4), ff's GEGLU proj (1)
            block = walk[i:i + 9]
            assert block[8][0].endswith("ff.net.0.proj")
            out += block[:4] + block[8:] + block[4:8]
            i += 9
        else:
            out.append(walk[i])
            i += 1
    return out


def _pairs(walk, rank, seed):
    """(up, down) per module: LoraInjectedLinear's [out, r] / [r, in], LoraInjectedConv2d's [out, r, 1, 1] /
    [r, in, kh, kw]; fp16 as lora_diffusion saves them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _, m in walk:
        w = m.weight
        up = torch.randn(w.shape[0], rank, *[1] * (w.dim() - 2), generator=g)
        out.append((up.half(), torch.randn(rank, *w.shape[1:], generator=g).half()))
    return out


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("sd15")


@pytest.fixture(scope="module")
def safelora(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cloneofsimo")
    walks = {"unet": _walk(model.unet, UNET_TARGETS), "text_encoder": _walk(model.text_encoders[0], TEXT_TARGETS)}
    pairs = {"unet": _pairs(walks["unet"], 2, 0), "text_encoder": _pairs(walks["text_encoder"], 3, 1)}
    tensors, metadata = {}, {}
    for group, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)):
        metadata[group] = json.dumps(targets)
        for i, (up, down) in enumerate(pairs[group]):
            tensors[f"{group}:{i}:up"], tensors[f"{group}:{i}:down"] = up, down
            metadata[f"{group}:{i}:rank"] = str(down.shape[0])
    embeds = {"<s1>": torch.randn(32), "<s2>": torch.randn(32)}
    for token, vector in embeds.items():
        tensors[token] = vector
        metadata[token] = "<embed>"
    save_file(tensors, str(folder / "lora.safetensors"), metadata)
    return folder / "lora.safetensors", walks, pairs, embeds


def _check_deltas(model, kohya, walks, pairs, names) -> None:
    """Applying the kohya file adds exactly up @ down to the named modules (and the right pair to each)."""
    patched = copy.deepcopy(model)
    apply_lora_files(patched, [LoraSpec(str(kohya))])
    parts = {"unet": (model.unet, patched.unet), "text_encoder": (model.text_encoders[0], patched.text_encoders[0])}
    checked = 0
    for group, walk in walks.items():
        before, after = parts[group]
        for (name, _), (up, down) in zip(walk, pairs[group]):
            if not any(name.endswith(n) for n in names):
                continue
            delta = after.get_submodule(name).weight - before.get_submodule(name).weight
            expected = (up.float().flatten(1) @ down.float().flatten(1)).reshape(delta.shape)
            torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-4)
            checked += 1
    assert checked >= 3


NAMES = ("mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
         "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
         "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_out.0", "layers.1.self_attn.q_proj",
         "layers.0.self_attn.k_proj", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v")


def test_safelora_converts_to_kohya_with_its_embedding(model, safelora, tmp_path):
    path, walks, pairs, embeds = safelora
    result = convert(path, tmp_path / "k.safetensors", to="kohya")
    notes = "\n".join(result.lines())
    assert "alpha = rank" in notes and "later diffusers (attn1, attn2, ff)" in notes
    with safe_open(str(result.output), framework="pt") as f:
        keys = list(f.keys())
        alphas = {k: f.get_tensor(k) for k in keys if k.endswith(".alpha")}
    n_pairs = len(pairs["unet"]) + len(pairs["text_encoder"])
    assert len(alphas) == n_pairs and all(k.startswith(("lora_unet_", "lora_te_text_model_")) for k in keys)
    assert {float(a) for k, a in alphas.items() if k.startswith("lora_te")} == {3.0}  # alpha = rank: scale 1.0
    _check_deltas(model, result.output, walks, pairs, NAMES)

    emb = tmp_path / "k_emb.safetensors"
    with safe_open(str(emb), framework="pt") as f:
        assert list(f.keys()) == ["emb_params"]
        torch.testing.assert_close(f.get_tensor("emb_params"), torch.stack([embeds["<s1>"], embeds["<s2>"]]))
        assert json.loads(f.metadata()["loraforge_tokens"]) == ["<s1>", "<s2>"]

    # vectors of another width than the model's text encoder: refused before anything is written
    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["<s1>"], tensors["<s2>"] = torch.randn(768), torch.randn(768)
    save_file(tensors, str(tmp_path / "wide.safetensors"), metadata)
    with pytest.raises(FamilyMismatchError, match="768 wide"):
        convert(tmp_path / "wide.safetensors", tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()

    # given where a LoRA or a model is expected: named for what it is, with the way out
    with pytest.raises(UnsupportedError, match="cloneofsimo.*loraforge convert"):
        apply_lora_files(copy.deepcopy(model), [LoraSpec(str(path))])
    with pytest.raises(ToolError, match="this is a LoRA file, not a Stable Diffusion model"):
        require_kind(path, ("model",), "--model", ToolError)

    report = str(inspect_file(path))
    for line in (f"unet {len(pairs['unet'])} (targets: CrossAttention, Attention, GEGLU)", "ranks: 2 (",
                 "embeddings: <s1><s2> (2 vectors x 32)", "--to kohya", "alpha = rank"):
        assert line in report, line


def test_pt_lists_need_allow_pickle_and_convert_in_either_diffusers_order(model, tmp_path, capsys):
    walks = {"unet": _legacy(_walk(model.unet, UNET_TARGETS)),
             "text_encoder": _walk(model.text_encoders[0], TEXT_TARGETS)}
    assert [n for n, _ in walks["unet"]] != [n for n, _ in _walk(model.unet, UNET_TARGETS)]
    pairs = {"unet": _pairs(walks["unet"], 4, 2), "text_encoder": _pairs(walks["text_encoder"], 4, 3)}
    for group, name in (("unet", "lora_weight.pt"), ("text_encoder", "lora_weight.text_encoder.pt")):
        torch.save([t for pair in pairs[group] for t in pair], tmp_path / name)

    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        convert(tmp_path / "lora_weight.pt", tmp_path / "u.safetensors", to="kohya")
    code = main(["convert", str(tmp_path / "lora_weight.pt"), str(tmp_path / "u.safetensors"), "--to", "kohya"])
    err = capsys.readouterr().err
    assert code == 2 and "pickle" in err and "--allow-pickle" in err and "Traceback" not in err
    assert not (tmp_path / "u.safetensors").exists()

    unet = convert(tmp_path / "lora_weight.pt", tmp_path / "u.safetensors", to="kohya", allow_pickle=True)
    assert "cloneofsimo's time (attn1, ff, attn2)" in "\n".join(unet.lines())
    te = convert(tmp_path / "lora_weight.text_encoder.pt", tmp_path / "t.safetensors", allow_pickle=True)
    _check_deltas(model, unet.output, {"unet": walks["unet"]}, pairs, NAMES)
    _check_deltas(model, te.output, {"text_encoder": walks["text_encoder"]}, pairs,
                  NAMES + ("layers.1.self_attn.out_proj",))

    # applying one directly says what it is and how to convert it
    with pytest.raises(UnsupportedError, match="cloneofsimo.*loraforge convert"):
        apply_lora_files(copy.deepcopy(model), [LoraSpec(str(tmp_path / "lora_weight.pt"))], allow_pickle=True)
    # the run's vectors, lora_weight.ti.pt: one embedding file, tokens in prompt order (<s2> before <s10>)
    vectors = {"<s1>": torch.randn(32), "<s10>": torch.randn(32), "<s2>": torch.randn(32)}
    torch.save(vectors, tmp_path / "lora_weight.ti.pt")
    emb = convert(tmp_path / "lora_weight.ti.pt", tmp_path / "sks.safetensors", allow_pickle=True).output
    with safe_open(str(emb), framework="pt") as f:
        expected = torch.stack([vectors[t] for t in ("<s1>", "<s2>", "<s10>")])
        torch.testing.assert_close(f.get_tensor("emb_params"), expected)
    assert "embeddings: <s1><s2><s10> (3 vectors x 32)" in str(inspect_file(tmp_path / "lora_weight.ti.pt", True))

    # one pair missing: no walk places the rest, nothing is written
    torch.save([t for pair in pairs["unet"][:-1] for t in pair], tmp_path / "short.pt")
    with pytest.raises(ShapeMismatchError, match="pairs"):
        convert(tmp_path / "short.pt", tmp_path / "s.safetensors", allow_pickle=True)
    assert not (tmp_path / "s.safetensors").exists()


def test_pt_with_the_extended_targets_converts_to_diffusers(model, tmp_path):
    """inject_trainable_lora_extended also adapts the resnets (Linear and Conv2d); a .pt does not say so: the default
    set does not fit, the extended one does."""
    targets = UNET_TARGETS + ["ResnetBlock2D"]
    walk = _walk(model.unet, targets, (torch.nn.Linear, torch.nn.Conv2d))
    pairs = {"unet": _pairs(walk, 2, 4)}
    torch.save([t for pair in pairs["unet"] for t in pair], tmp_path / "lora_weight.pt")
    result = convert(tmp_path / "lora_weight.pt", tmp_path / "d", to="diffusers", allow_pickle=True)
    assert result.output.name == "pytorch_lora_weights.safetensors"
    assert "ResnetBlock2D" in "\n".join(result.lines())
    _check_deltas(model, result.output, {"unet": walk}, pairs,
                  ("down_blocks.1.resnets.0.conv1", "down_blocks.1.resnets.0.conv_shortcut",
                   "up_blocks.0.resnets.2.time_emb_proj", "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"))
