"""The save-time consumer check of an embeddings file: read back as A1111, ComfyUI and diffusers read it, compared
with the model's text encoders."""

import torch
from safetensors.torch import save_file

from loraforge.formats.embeddings import check_embedding_file, save_embeddings


def test_a_fitting_embedding_passes(tmp_path):
    path = save_embeddings(tmp_path / "a_emb.safetensors", "sdxl", [torch.ones(2, 32), torch.ones(2, 64)])
    summary, problems = check_embedding_file(path, "sdxl", [32, 64])
    assert problems == [] and summary == "clip_l 2×32, clip_g 2×64: loads in A1111, ComfyUI and diffusers"


def test_wrong_width_family_and_values_are_reported(tmp_path):
    path = save_embeddings(tmp_path / "a_emb.safetensors", "sd15", [torch.ones(2, 32)])
    assert check_embedding_file(path, "sd15", [48])[1] == ["clip_l vectors are 32 wide, the text encoder 48"]
    assert check_embedding_file(path, "sdxl", [32, 64])[1] == ["holds clip_l; sdxl reads clip_l, clip_g"]
    save_file({"emb_params": torch.full((2, 32), float("nan"))}, str(tmp_path / "nan_emb.safetensors"))
    summary, problems = check_embedding_file(tmp_path / "nan_emb.safetensors", "sd15", [32])
    assert summary == "unreadable" and "NaN" in problems[0]
