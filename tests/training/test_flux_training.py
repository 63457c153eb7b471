"""FLUX.1 LoRA training on the embedded tiny FLUX: it learns, its diffusers file reproduces the trained transformer
in a fresh FluxPipeline, a resumed run is bit-exact, the flow options are honoured, and options of the DDPM
objective are refused with the reason."""

import re

import pytest
import torch
from safetensors.torch import load_file

from loraforge.data.dataset import collate
from loraforge.errors import ConfigError
from loraforge.models.tiny import tiny_model_dir
from loraforge.training.flow import flow_target, noisy_latents
from loraforge.training.timesteps import draw_flow_timestep
from loraforge.training.trainer import Trainer

from .resume import assert_same_tensors, straight_and_resumed
from .test_data_training import data_options, images

SHORT_T5 = {"model.max_sequence_length": 16}  # a short T5 sequence keeps the tests fast


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _prepared(make_config, **overrides) -> Trainer:
    t = Trainer(make_config("flux", **{**SHORT_T5, **overrides}))
    t.prepare()
    return t


def _fixed(t: Trainer):
    batch = collate([t.dataset[0], t.dataset[1]])
    torch.manual_seed(0)
    latents = t.encode_latents(batch["pixel_values"])
    return batch, latents, torch.randn_like(latents), torch.tensor([300.0, 700.0])  # σ = 0.3, 0.7


def test_flux_lora_overfits_one_fixed_batch(make_config):
    t = _prepared(make_config, **{"optimizer.learning_rate": 3e-2})
    try:
        assert t.network.parts == ("unet",)
        names = {path for (_, path) in t.network.module_tensors()}
        # attention, MLPs and modulation of the double and single blocks; not the final projection
        for path in ("transformer_blocks.0.attn.add_q_proj", "transformer_blocks.1.ff_context.net.2",
                     "transformer_blocks.0.norm1.linear", "single_transformer_blocks.1.proj_mlp",
                     "single_transformer_blocks.0.norm.linear", "single_transformer_blocks.0.proj_out"):
            assert path in names, path
        assert "proj_out" not in names
        batch, latents, noise, timesteps = _fixed(t)
        assert latents.shape == (2, 16, 8, 8)
        losses = []
        for _ in range(12):
            loss = t.compute_loss(batch, latents, noise, timesteps)
            t.accelerator.backward(loss)
            t.optimizer.step()
            t.optimizer.zero_grad()
            losses.append(loss.item())
    finally:
        t.close()
    assert losses[-1] < 0.75 * losses[0], losses  # measured -37 % in 12 steps


def test_the_loss_is_the_flow_target_mse(make_config):
    """compute_loss = mean((unpacked transformer output − (noise − latents))²) with the noisy latents
    (1 − σ)·x + σ·noise; the weighting scheme multiplies it per sample; the guidance value reaches [dev]."""
    t = _prepared(make_config)
    try:
        batch, latents, noise, timesteps = _fixed(t)
        with torch.no_grad():
            loss = t.compute_loss(batch, latents, noise, timesteps)
            sigmas = timesteps / 1000
            cond = t.encode_batch_text(batch["captions"])
            pred = t.step.flow_prediction(noisy_latents(latents, noise, sigmas), sigmas, cond)
            per_sample = ((pred - flow_target(latents, noise)) ** 2).mean(dim=(1, 2, 3))
            assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
            t.step.training = t.cfg.training.model_copy(update={"weighting_scheme": "sigma_sqrt"})
            weighted = t.compute_loss(batch, latents, noise, timesteps)
            assert weighted.item() == pytest.approx((per_sample / sigmas**2).mean().item(), rel=1e-5)
            t.step.training = t.cfg.training.model_copy(update={"guidance_scale": 4.0})
            assert t.compute_loss(batch, latents, noise, timesteps).item() != pytest.approx(loss.item())
            # drawn timesteps are σ·1000 of the flow draw (8×8 latents: 16 packed tokens), per sample seed
            t.step.training = t.cfg.training.model_copy(update={"flow_shift": 3.0})
            _, drawn = t.make_noise(latents, [3, 4])
            want = [draw_flow_timestep(torch.Generator().manual_seed(s), t.step.training, 1000, 16,
                                       t.noise_scheduler.config) for s in (3, 4)]
            assert drawn.dtype == torch.float32 and torch.equal(drawn, torch.cat(want))
    finally:
        t.close()


def test_diffusers_file_reproduces_the_trained_transformer(make_config):
    from diffusers import FluxPipeline

    t = Trainer(make_config("flux", **{**SHORT_T5, "training.max_train_steps": 3, "optimizer.learning_rate": 3e-2,
                                       "network.alpha": 2, "network.train_text_encoder": True}))
    result = t.run()
    # the kohya file: sd-scripts' names, q/k/v fused, checked against the consumers at save time
    ksd = load_file(str(result.files.kohya))
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in ksd
    assert "lora_unet_single_blocks_1_linear1.lora_up.weight" in ksd
    log = (result.run_dir / "train.log").read_text()
    # every module loads in ComfyUI and Forge (diffusers' kohya converter assumes the full-size widths: it fails on
    # the tiny model by design, and the check says so)
    assert re.search(r"check run-flux\.safetensors: ComfyUI (\d+)/\1 modules, Forge (\d+)/\2", log), log
    assert "no kohya file" not in log
    sd = load_file(str(result.files.diffusers))
    # CLIP-L keys keep the `text_model.` level (ComfyUI maps only that spelling; diffusers reads both)
    assert {k.split(".")[0] for k in sd} == {"transformer", "text_encoder"}
    assert all(k.startswith("text_encoder.text_model.encoder.layers.") for k in sd if k.startswith("text_encoder."))
    trained = t.model.unet
    fresh = FluxPipeline.from_pretrained(str(tiny_model_dir("flux")), local_files_only=True)
    torch.manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 16, 64), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([1.0]), pooled_projections=torch.randn(1, 32),
                  encoder_hidden_states=torch.randn(1, 16, 32), txt_ids=torch.zeros(16, 3),
                  img_ids=torch.randn(16, 3).round(), return_dict=False)
    with torch.no_grad():
        base = fresh.transformer(**inputs)[0]
        fresh.load_lora_weights(str(result.run_dir))
        loaded = fresh.transformer(**inputs)[0]
        want = trained(**inputs)[0]
    assert not torch.allclose(base, want, atol=1e-4)  # the LoRA changed the output
    assert torch.allclose(loaded, want, atol=1e-5)
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    with torch.no_grad():
        te_want = t.model.text_encoders[0](ids).last_hidden_state
        te_loaded = fresh.text_encoder(ids).last_hidden_state
        te_base = FluxPipeline.from_pretrained(str(tiny_model_dir("flux")), local_files_only=True).text_encoder(
            ids).last_hidden_state
    assert not torch.allclose(te_base, te_want, atol=1e-4) and torch.allclose(te_loaded, te_want, atol=1e-5)


def test_resume_is_bit_exact(make_config):
    common = {**SHORT_T5, "training.max_train_steps": 4, "training.flow_resolution_shift": True,
              "training.timestep_sampling": "logit_normal"}
    straight, resumed, _ = straight_and_resumed(make_config, "flux", common, save_at=2)
    assert resumed.losses == straight.losses[2:]
    assert_same_tensors(straight.files.diffusers, resumed.files.diffusers)


def test_cached_text_releases_t5_and_trains(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64), (64, 64)])
    options = data_options(folder, **{"dataset.cache_text_encoder_outputs": True,
                                      "dataset.cache_text_encoder_outputs_to_disk": True,
                                      "training.max_train_steps": 1})
    t = _prepared(make_config, **options)
    try:
        assert {p.device.type for te in t.model.text_encoders for p in te.parameters()} == {"meta"}
        batch = next(iter(t.train_dataloader))
        assert batch["prompt_embeds"].shape[1:] == (16, 32) and batch["pooled"].shape[1:] == (32,)
        assert torch.isfinite(t.compute_loss(batch))
    finally:
        t.close()
    # another T5 length is another cache entry, not the 16-token one on disk
    t = _prepared(make_config, **{**options, "model.max_sequence_length": 24})
    try:
        assert next(iter(t.train_dataloader))["prompt_embeds"].shape[1:] == (24, 32)
    finally:
        t.close()


@pytest.mark.parametrize("option,value,why", [
    ("training.snr_gamma", 5.0, "min-SNR"),
    ("training.debiased_estimation_loss", True, "SNR"),
    ("training.noise_offset", 0.05, "Gaussian"),
    ("training.zero_terminal_snr", True, "pure noise already"),
    ("training.clip_skip", 2, "pooled output"),
    ("model.prediction_type", "v_prediction", "predicts the flow"),
    ("dataset.max_token_length", 150, "T5"),
])
def test_ddpm_options_are_refused_for_flux(make_config, option, value, why):
    with pytest.raises(ConfigError, match=f"(?s){option.split('.')[1]}.*{why}"):
        make_config("flux", **{option: value})


@pytest.mark.parametrize("option,value", [("training.flow_shift", 3.0), ("training.weighting_scheme", "cosmap"),
                                          ("training.guidance_scale", 3.5)])
def test_flow_options_are_refused_for_sd(make_config, option, value):
    with pytest.raises(ConfigError, match=f"{option}.*flow-matching options"):
        make_config("sd15", **{option: value})


def test_two_shifts_are_refused(make_config):
    with pytest.raises(ConfigError, match="flow_shift and training.flow_resolution_shift"):
        make_config("flux", **{"training.flow_shift": 3.0, "training.flow_resolution_shift": True})


def test_an_int8_base_trains_a_flux_lora(make_config):
    """`model.quantize_base = "int8"` on FLUX's transformer: its linear layers are stored by torchao, the LoRA wraps
    them (peft's TorchaoLoraLinear), the loss goes down on a fixed batch and the kohya file has the same keys as
    over an unquantized base."""
    pytest.importorskip("torchao")
    from torchao.utils import TorchAOBaseTensor

    keys = {}
    for mode in ("none", "int8"):
        t = _prepared(make_config, **{"model.quantize_base": mode, "training.max_train_steps": 1,
                                      "optimizer.learning_rate": 1e-2, "output.output_name": f"run-{mode}"})
        try:
            quantized = [m for m in t.model.unet.modules()
                         if isinstance(m, torch.nn.Linear) and isinstance(m.weight, TorchAOBaseTensor)]
            assert (len(quantized) > 30) == (mode == "int8"), len(quantized)
            if mode == "int8":
                batch, latents, noise, steps = _fixed(t)
                losses = []
                for _ in range(4):
                    loss = t.compute_loss(batch, latents, noise, steps)
                    loss.backward()
                    t.optimizer.step()
                    t.optimizer.zero_grad(set_to_none=True)
                    losses.append(loss.item())
                assert losses[-1] < losses[0], losses
            t.train()
            keys[mode] = set(load_file(str(t.finish().files.kohya)))
        finally:
            t.close()
    assert keys["int8"] == keys["none"] and any("double_blocks_0_img_attn_qkv" in k for k in keys["none"])


@pytest.mark.parametrize("algo", ["loha", "dora"])
def test_lycoris_adapters_train_and_write_a_file_comfyui_loads(make_config, algo):
    """LoHa / LoKr / DoRA train through the same adapter layer; their parts of a fused layer go into the kohya file
    under LyCORIS' diffusers names, which ComfyUI and Forge apply to the fused weight's rows (checked at save)."""
    result = Trainer(make_config("flux", **{**SHORT_T5, "network.algo": algo, "training.max_train_steps": 1})).run()
    names = {k.split(".")[0] for k in load_file(str(result.files.kohya))}
    assert "lycoris_transformer_blocks_0_attn_to_q" in names and result.files.diffusers is None
    log = (result.run_dir / "train.log").read_text()
    assert re.search(r"check run-flux\.safetensors: ComfyUI (\d+)/\1 modules, Forge (\d+)/\2", log), log
