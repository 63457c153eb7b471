"""`loraforge plan`: the memory / time estimate and its proposals; the CUDA memory warning (with fake stats)."""

import copy
import json

import pytest
import torch

from loraforge.cli import main
from loraforge.training.estimate import (PCIE_GBPS, _swap_to_fit, block_swap_bytes, estimate, meta_model,
                                         model_folder, propose)
from loraforge.training.memory import MemoryWatch
from loraforge.training.plan import plan_run


def test_counts_match_the_real_model_and_network(make_config, tiny_models):
    from loraforge.networks import create_network

    cfg = make_config("sd15", **{"network.rank": 8, "network.train_text_encoder": True})
    plan = plan_run(cfg)
    e = estimate(cfg, plan, cuda=False)
    real = copy.deepcopy(tiny_models("sd15"))
    n_weights = sum(p.numel() for m in (real.unet, real.vae, *real.text_encoders) for p in m.parameters())
    assert e.weights_gib * 2**30 == pytest.approx(n_weights * 4)  # fp32 on the CPU
    net = create_network(cfg.network)
    net.apply(real)
    trained = sum(p.numel() for part in net.parts for p in net.parameters(part))
    assert e.network_params == trained
    assert e.trainable_gib * 2**30 == pytest.approx(trained * (4 + 4 + 8))  # weights, grads, AdamW's two states


def test_each_option_moves_the_estimate_the_way_it_should(make_config):
    cfg = make_config("sd15", **{"training.batch_size": 2})
    plan = plan_run(cfg)
    model = lambda: meta_model(model_folder(cfg, plan), plan.family)  # noqa: E731
    base = estimate(cfg, plan, cuda=True, model=model())
    gc = estimate(make_config("sd15", **{"training.batch_size": 2, "training.gradient_checkpointing": True}),
                  plan, cuda=True, model=model())
    assert gc.activations_gib < 0.7 * base.activations_gib and gc.step_s > base.step_s
    one = estimate(make_config("sd15", **{"training.batch_size": 1}), plan, cuda=True, model=model())
    assert one.activations_gib == pytest.approx(base.activations_gib / 2, rel=0.1)  # a few tensors per step
    # 8-bit AdamW shrinks the optimizer state; cached latents take the VAE encode out of the step
    both = estimate(make_config("sd15", **{"training.batch_size": 2, "optimizer.type": "adamw8bit",
                                           "dataset.cache_latents": True}), plan, cuda=True, model=model())
    assert both.trainable_gib == pytest.approx(base.trainable_gib * (4 + 4 + 2) / (4 + 4 + 8))
    assert both.step_tflops < base.step_tflops and both.step_ops < base.step_ops
    # with no samples drawn (make_config), the VAE leaves the device once the latents are cached
    # (the caches fill before the UNet reaches the device: then only the text encoder and the VAE are there)
    unet_gib = sum(p.numel() for p in model().unet.parameters()) * 2 / 2**30  # bf16
    assert both.weights_gib < base.weights_gib and both.loading_gib == pytest.approx(base.weights_gib - unet_gib)


def test_proposals_turn_on_checkpointing_first_and_stop_when_it_fits(make_config):
    cfg = make_config("sd15", **{"training.batch_size": 4})
    plan = plan_run(cfg)
    base = estimate(cfg, plan, cuda=True)
    gc_cfg = make_config("sd15", **{"training.batch_size": 4, "training.gradient_checkpointing": True})
    with_gc = estimate(gc_cfg, plan, cuda=True)
    vram = (base.peak_gib + with_gc.peak_gib) / 2 / 0.95  # between the two: checkpointing alone fits
    p = propose(cfg, plan, vram)
    assert p.fits and [text for text, _ in p.steps] == ["training.gradient_checkpointing = true"]
    assert propose(cfg, plan, base.peak_gib / 0.9).steps == []  # fits as configured: nothing to change


def test_plan_command_json_and_table(make_config, capsys, tmp_path):
    cfg = ["--set", "model.family='sd15'", "--set", "training.batch_size=2"]
    assert main(["plan", *cfg, "--cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    e = data["estimates"][0]
    assert data["tiny"] and e["device"] == "cpu" and e["settings"]["training.batch_size"] == 2
    assert e["peak_gib"] == pytest.approx(e["weights_gib"] + e["trainable_gib"] + e["activations_gib"]
                                          + e["overhead_gib"], abs=0.01)
    small = [f"--set={s}" for s in ("model.family='sd15'", "network.rank=4", "training.gradient_checkpointing=true",
                                     "optimizer.type='adamw8bit'", "dataset.cache_latents=true")]
    assert main(["plan", *small, "--vram", "0.0001"]) == 1  # nothing fits 100 KiB, nothing is left to change
    out = capsys.readouterr()
    assert "too big" in out.out and "no set of the usual changes fits 0.0001 GiB" in out.err


def test_memory_watch_warns_near_the_limit_and_on_retries_naming_the_option(make_config):
    watch = MemoryWatch(make_config("sd15"), "cuda:0")
    gib = 2**30
    assert watch.check({"reserved_bytes.all.peak": 10 * gib, "num_alloc_retries": 0}, 12 * gib) == []
    near = watch.check({"reserved_bytes.all.peak": 11.5 * gib, "num_alloc_retries": 0}, 12 * gib, step=7)
    assert len(near) == 1 and "step 7" in near[0] and "within 5 %" in near[0]
    assert "training.gradient_checkpointing = true" in near[0]
    assert watch.check({"reserved_bytes.all.peak": 11.6 * gib, "num_alloc_retries": 0}, 12 * gib) == []  # once
    first = watch.check({"reserved_bytes.all.peak": 11.6 * gib, "num_alloc_retries": 1}, 12 * gib)
    assert len(first) == 1 and "retry 1 time" in first[0]
    assert watch.check({"num_alloc_retries": 1}, 12 * gib) == []
    assert len(watch.check({"num_alloc_retries": 2}, 12 * gib)) == 1  # again when doubled
    # with checkpointing on and batch 1, the advice moves on to the next option
    later = MemoryWatch(make_config("sd15", **{"training.gradient_checkpointing": True,
                                               "training.mixed_precision": "bf16"}), "cuda:0")
    assert "adamw8bit" in later.check({"num_alloc_retries": 3}, 12 * gib)[0]
    assert MemoryWatch(make_config("sd15"), "cpu").check() == []  # off CUDA: nothing to watch


def test_the_trainer_checks_memory_after_every_step(make_config, monkeypatch):
    from loraforge.training.trainer import Trainer

    steps = []
    monkeypatch.setattr(MemoryWatch, "check", lambda self, stats=None, total_bytes=None, step=None: steps.append(step))
    Trainer(make_config("sd15", **{"training.max_train_steps": 2})).run()
    assert steps == [1, 2]


def test_flux_estimate_counts_the_transformer_t5_and_what_quantizing_and_caching_free(tmp_path):
    """Full-size FLUX.1 [dev] on the meta device: the weights are the transformer's, T5's, CLIP-L's and the VAE's
    (bf16); int8 stores every linear weight of the transformer in one byte; cached text with no samples releases the
    text encoders after caching (the peak then is the loading phase or training, whichever is larger); the proposal
    for a 24 GiB card reaches a fit through those two changes."""
    from PIL import Image

    from loraforge.config import load_config
    from loraforge.models.configs import config_folder

    for i in range(2):
        Image.new("RGB", (512, 512), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")

    def cfg_with(*sets):
        return load_config(None, ["model.family='flux'", f"model.pretrained_model_name_or_path='{config_folder('flux')}'",
                                  "dataset.resolution=512", "model.max_sequence_length=128", "network.rank=16",
                                  "training.gradient_checkpointing=true", "training.mixed_precision='bf16'",
                                  f"dataset.instance_dir='{tmp_path}'", "dataset.instance_prompt='a photo of sks'",
                                  *sets])

    cfg = cfg_with()
    plan = plan_run(cfg)
    model = meta_model(model_folder(cfg, plan), plan.family)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    transformer, text, vae = count(model.unet), sum(count(te) for te in model.text_encoders), count(model.vae)
    assert 11.5e9 < transformer < 12.5e9 and 4.5e9 < text < 5.0e9  # FLUX.1's 12B transformer, T5-XXL + CLIP-L
    base = estimate(cfg, plan, cuda=True, model=model)
    assert base.weights_gib * 2**30 == pytest.approx((transformer + text + vae) * 2)
    assert base.activations_gib > 0 and base.network_params > 0
    linear = sum(m.weight.numel() for m in model.unet.modules() if type(m).__name__ == "Linear")
    q = estimate(cfg_with("model.quantize_base='int8'"), plan, cuda=True, model=model)
    assert (base.weights_gib - q.weights_gib) * 2**30 == pytest.approx(linear)  # 2 bytes -> 1 per linear weight
    cached = estimate(cfg_with("model.quantize_base='int8'", "dataset.cache_text_encoder_outputs=true",
                               "sampling.at_end=false"), plan, cuda=True, model=model)
    assert (q.weights_gib - cached.weights_gib) * 2**30 == pytest.approx(text * 2)  # the text encoders leave
    # ... after they filled the cache, which happens before the transformer reaches the device
    assert cached.loading_gib * 2**30 == pytest.approx(text * 2 + vae * 2)
    assert cached.peak_gib < q.peak_gib and cached.step_s < q.step_s  # no T5 forward in the step either
    longer = estimate(cfg_with("model.max_sequence_length=512"), plan, cuda=True, model=model)
    assert longer.activations_gib > base.activations_gib and longer.step_tflops > base.step_tflops
    proposal = propose(cfg, plan, 24.0, model=model)
    changes = [text for text, _ in proposal.steps]
    assert proposal.fits and 'model.quantize_base = "int8"' in changes, changes
    assert any(c.startswith("dataset.cache_text_encoder_outputs = true") for c in changes), changes
    # block swap: 19 of 57 blocks in CPU memory keep the 38 largest consecutive ones (19 double + 19 single) on the
    # device, so 19 single blocks leave; a step copies the last 19 in the forward and the 19 before the last in the
    # backward (the block that ran last leaves): 38 single blocks
    single = count(model.unet.single_transformer_blocks[0]) * 2
    swapped = estimate(cfg_with("training.blocks_to_swap=19"), plan, cuda=True, model=model)
    assert (base.weights_gib - swapped.weights_gib) * 2**30 == pytest.approx(19 * single)
    assert swapped.swapped_gib * 2**30 == pytest.approx(19 * single)
    assert swapped.step_s - base.step_s == pytest.approx(38 * single / (PCIE_GBPS * 1e9))
    # the fewest blocks that bring a peak down to a limit
    fit = _swap_to_fit(cfg, model, limit_gib=base.training_gib - 5.0, training_gib=base.training_gib)
    n = fit.training.blocks_to_swap
    off = lambda k: block_swap_bytes(model, k, torch.bfloat16, "none").off_device  # noqa: E731
    assert off(n) >= 5.0 * 2**30 > off(n - 1), n
    # a 12 GiB card: the proposal swaps blocks (before touching the batch or the rank)
    small = propose(cfg_with("model.quantize_base='int8'", "dataset.cache_text_encoder_outputs=true",
                             "sampling.at_end=false", "optimizer.type='adamw8bit'", "dataset.cache_latents=true"),
                    plan, 12.0, model=model)
    assert small.fits and [t for t, _ in small.steps][0].startswith("training.blocks_to_swap = "), small.steps
