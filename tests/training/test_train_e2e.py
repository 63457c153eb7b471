"""End to end on the tiny models: the files a run writes reproduce the trained model in diffusers, the kohya file
equals the diffusers file, and the run folder holds the config, the log and the samples."""

import pytest
import torch
from PIL import Image

from loraforge.config import load_config
from loraforge.families import FAMILIES
from loraforge.models.text import encode_prompts
from loraforge.training.trainer import RunFolderError, Trainer

from .resume import assert_same_tensors, straight_and_resumed


def _fresh_pipe(tiny_dirs, family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kw = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    return cls.from_pretrained(str(tiny_dirs[family]), local_files_only=True, **kw)


def _unet_out(unet, family, cond_dim, pooled_dim=None):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    hidden = torch.randn(1, 77, cond_dim, generator=g)
    added = None
    if family == "sdxl":
        added = {"text_embeds": torch.randn(1, pooled_dim, generator=g),
                 "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), hidden, added_cond_kwargs=added).sample


def _te_out(pipe_or_model, family, prompts=("a photo of sks robot",)):
    tokenizers = [pipe_or_model.tokenizer] + ([pipe_or_model.tokenizer_2] if family == "sdxl" else [])
    encoders = [pipe_or_model.text_encoder] + ([pipe_or_model.text_encoder_2] if family == "sdxl" else [])
    with torch.no_grad():
        c = encode_prompts(FAMILIES[family], tokenizers, encoders, list(prompts))
    return c.prompt_embeds, c.pooled


@pytest.mark.parametrize(
    "family,train_te",
    [("sd15", False), ("sd15", True), ("sd2", False), ("sdxl", False), ("sdxl", True)],
    ids=["sd15-unet", "sd15-unet+te", "sd2-vpred-unet", "sdxl-unet", "sdxl-unet+te"],
)
def test_outputs_reproduce_the_trained_model(make_config, tiny_dirs, family, train_te):
    cfg = make_config(family, **{"network.train_text_encoder": train_te, "sampling.at_end": True})
    trainer = Trainer(cfg)
    result = trainer.run()
    run = result.run_dir
    assert result.steps == 4
    files = result.files
    assert files.kohya == run / f"run-{family}.safetensors" and files.kohya.is_file()
    assert files.diffusers == run / "pytorch_lora_weights.safetensors" and files.diffusers.is_file()

    trained = trainer.model
    assert trained.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    trained.unet.eval()
    cond_dim = trained.unet.config.cross_attention_dim
    pooled_dim = trained.text_encoders[-1].config.projection_dim if family == "sdxl" else None
    want_unet = _unet_out(trained.unet, family, cond_dim, pooled_dim)
    pipe_like = trained.pipeline()
    want_te = _te_out(pipe_like, family)

    base = _fresh_pipe(tiny_dirs, family)
    base_unet = _unet_out(base.unet, family, cond_dim, pooled_dim)
    assert (want_unet - base_unet).abs().max() > 1e-6, "the LoRA does not change the UNet output"

    for source in (run, files.kohya):  # the diffusers folder, then the kohya file
        pipe = _fresh_pipe(tiny_dirs, family)
        pipe.load_lora_weights(str(source))
        got_unet = _unet_out(pipe.unet, family, cond_dim, pooled_dim)
        torch.testing.assert_close(got_unet, want_unet, rtol=0, atol=1e-6)
        got_te = _te_out(pipe, family)
        torch.testing.assert_close(got_te[0], want_te[0], rtol=0, atol=1e-6)
        if family == "sdxl":
            torch.testing.assert_close(got_te[1], want_te[1], rtol=0, atol=1e-6)
        if train_te:
            base_te = _te_out(base, family)
            assert (base_te[0] - got_te[0]).abs().max() > 1e-6, "the text-encoder LoRA did not load"

    # the run folder: resolved config (loadable as is), log, samples with their parameters
    again = load_config(run / "config.toml")
    assert again == cfg
    assert "training" in (run / "train.log").read_text()
    pngs = sorted((run / "samples").glob("final_*.png"))
    assert pngs, "no sample images"
    params = Image.open(pngs[0]).text["parameters"]
    assert "a photo of sks robot" in params and "Steps: 2" in params


def test_kohya_file_layout_and_metadata(make_config):
    from safetensors import safe_open

    cfg = make_config("sd15", **{"network.alpha": 2.0, "network.train_text_encoder": True})
    result = Trainer(cfg).run()
    with safe_open(str(result.files.kohya), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
        alphas = [f.get_tensor(k) for k in keys if k.endswith(".alpha")]
        downs = [k for k in keys if k.endswith(".lora_down.weight")]
        assert all(a.ndim == 0 and a.item() == 2.0 for a in alphas)
        assert len(alphas) == len(downs) == len([k for k in keys if k.endswith(".lora_up.weight")])
    modules = {k.partition(".")[0] for k in keys}
    assert all("." not in m for m in modules)
    assert any(m.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q") for m in modules)
    assert any(m.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for m in modules)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_network_module"] == "networks.lora"
    assert len(meta["sshs_model_hash"]) == 64 and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_refuses_to_overwrite_a_finished_run(make_config):
    cfg = make_config("sd15", **{"training.max_train_steps": 1})
    Trainer(cfg).run()
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        Trainer(cfg).run()
    cfg.output.overwrite = True
    assert Trainer(cfg).run().steps == 1


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(make_config):
    # batch 2 over 8 images: 4 steps an epoch, so the resumed run crosses an epoch boundary
    common = {"training.max_train_steps": 6, "optimizer.lr_scheduler": "cosine", "optimizer.lr_warmup_steps": 2,
              "dataset.random_flip": True, "dataset.center_crop": False, "training.batch_size": 2}
    straight, resumed, ckpt = straight_and_resumed(make_config, "sd15", common, save_at=3)
    assert (ckpt / "train_state.json").is_file()
    assert (ckpt / "first-step00000003.safetensors").is_file()
    assert_same_tensors(straight.files.kohya, resumed.files.kohya)
    assert resumed.losses == straight.losses[3:]
