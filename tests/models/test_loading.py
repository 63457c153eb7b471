"""Model loading from every source users have, with clear messages when it cannot work."""

import pytest
import torch

from loraforge.config import load_config
from loraforge.families.detect import detect_family_from_folder
from loraforge.models.loading import ModelLoadError, load_model
from loraforge.models.tokenizer import clip_tokenizer


def model_cfg(*overrides):
    return load_config(None, list(overrides)).model


def test_real_clip_tokenizer_is_shipped():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenizer(pad_token="!").pad_token_id == 0


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_embedded_tiny_models_have_the_real_architecture(tiny_dirs, family):
    m = load_model(model_cfg(f"model.family={family}"))
    assert m.is_tiny and m.family.name == family and m.prediction_type == "epsilon"
    assert detect_family_from_folder(tiny_dirs[family]) == family
    assert all(te.config.vocab_size == 49408 for te in m.text_encoders)
    if family == "sdxl":
        assert m.unet.config.addition_embed_type == "text_time"
        assert m.tokenizers[1].pad_token_id == 0 and m.tokenizers[0].pad_token_id == 49407
        assert m.text_encoders[1].config.hidden_size > m.text_encoders[0].config.hidden_size


def test_building_a_tiny_model_leaves_the_random_state_alone(tmp_path, monkeypatch):
    """The first run on a machine builds the tiny model (its builder seeds torch); its LoRA must start from the same
    random state as every later run of the same seed (it did not: a process's first run initialised another LoRA)."""
    from loraforge.models import tiny

    class Built:  # a builder as the real ones: seeds torch, draws weights, saves a diffusers folder
        def __init__(self):
            torch.manual_seed(0)
            torch.randn(8)

        def save_pretrained(self, folder):
            (folder / "model_index.json").write_text("{}")

    monkeypatch.setitem(tiny.BUILDERS, "sd15", Built)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    assert (tiny.tiny_model_dir("sd15", root=tmp_path) / "model_index.json").is_file()
    assert torch.equal(torch.random.get_rng_state(), before)


def test_local_diffusers_folder_and_family_detection(tiny_dirs):
    m = load_model(model_cfg(f"model.pretrained_model_name_or_path={str(tiny_dirs['sdxl'])!r}"))
    assert m.family.name == "sdxl" and not m.is_tiny and m.source == str(tiny_dirs["sdxl"])


def test_single_safetensors_file_loads_offline_with_generated_config(tmp_path, tiny_dirs):
    from loraforge.formats.single_file import save_single_file

    src = load_model(model_cfg("model.family=sd15"))
    path = save_single_file(tmp_path / "tiny.safetensors", "sd15", src.unet, src.vae, src.text_encoders)
    # the tiny model is not the full-size SD 1.5, so pass its own folder as the config
    m = load_model(model_cfg(f"model.pretrained_model_name_or_path={str(path)!r}",
                             f"model.config_dir={str(tiny_dirs['sd15'])!r}"))
    assert m.family.name == "sd15"
    for a, b in zip(src.unet.state_dict().values(), m.unet.state_dict().values()):
        assert torch.equal(a, b)


def test_pickle_checkpoints_need_explicit_permission(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ModelLoadError, match="pickle-based.*allow_pickle = true"):
        load_model(model_cfg(f"model.pretrained_model_name_or_path={str(ckpt)!r}"))


def test_missing_local_path_and_offline_hub_id_messages():
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(model_cfg("model.pretrained_model_name_or_path='./models/nothing.safetensors'"))
    with pytest.raises(ModelLoadError, match="could not fetch 'stabilityai/stable-diffusion-xl-base-1.0'.*local diffusers folder"):
        load_model(model_cfg("model.pretrained_model_name_or_path='stabilityai/stable-diffusion-xl-base-1.0'"))


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        load_model(model_cfg(f"model.pretrained_model_name_or_path={str(tmp_path)!r}"))


def test_prediction_type_override(tiny_dirs):
    m = load_model(model_cfg("model.prediction_type=v_prediction"))
    assert m.prediction_type == "v_prediction"
    assert m.noise_scheduler().config.prediction_type == "v_prediction"


def test_ckpt_loads_when_pickle_is_allowed(tmp_path, tiny_dirs):
    from loraforge.formats.single_file import to_single_file_state_dict

    src = load_model(model_cfg("model.family=sd15"))
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": to_single_file_state_dict("sd15", src.unet, src.vae, src.text_encoders)}, ckpt)
    m = load_model(model_cfg(f"model.pretrained_model_name_or_path={str(ckpt)!r}", "model.allow_pickle=true",
                             f"model.config_dir={str(tiny_dirs['sd15'])!r}"))
    assert m.family.name == "sd15"
    for a, b in zip(src.unet.state_dict().values(), m.unet.state_dict().values()):
        assert torch.equal(a, b)
