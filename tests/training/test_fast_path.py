"""The fast-path options of issue 13 that a CPU can check: selective activation checkpointing, channels-last, pinned
memory, torch.compile's mode, and a torchao-quantized frozen base (`model.quantize_base`)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from loraforge.errors import ConfigError
from loraforge.training import compile as compile_module
from loraforge.training.checkpointing import selective_checkpoint
from loraforge.training.compile import check_static_shapes
from loraforge.training.quantize import check_quantize
from loraforge.training.trainer import Trainer


def _prepared(make_config, **overrides) -> Trainer:
    t = Trainer(make_config("sd15", **overrides))
    t.prepare()
    return t


def _fixed_inputs(t: Trainer):
    batch = next(iter(t.train_dataloader))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch["latents"].shape if "latents" in batch else (1, 4, 8, 8), generator=g)
    if "latents" not in batch:
        latents = t.encode_latents(batch["pixel_values"], batch["latent_seeds"])
    return batch, latents, torch.randn(latents.shape, generator=g), torch.tensor([500] * latents.shape[0])


def _loss_grads_flops(t: Trainer):
    """Loss, LoRA gradients and FLOPs (forward + backward, recomputation included) of one fixed step."""
    batch, latents, noise, steps = _fixed_inputs(t)
    with FlopCounterMode(display=False) as flops:
        loss = t.compute_loss(batch, latents, noise, steps)
        loss.backward()
    grads = [p.grad.clone() for p in t.network_params]
    t.optimizer.zero_grad(set_to_none=True)
    return loss.item(), grads, flops.get_total_flops()


def test_selective_checkpointing_keeps_the_math_and_recomputes_no_matmul(make_config):
    results = {}
    for mode in (False, True, "selective"):
        t = _prepared(make_config, **{"training.gradient_checkpointing": mode})
        try:
            funcs = {m._gradient_checkpointing_func for m in t.model.unet.modules()
                     if getattr(m, "gradient_checkpointing", False)}
            if mode == "selective":
                assert funcs == {selective_checkpoint}
            results[mode] = _loss_grads_flops(t)
        finally:
            t.close()
    (loss0, grads0, flops0), (loss1, grads1, flops1), (loss2, grads2, flops2) = (results[m] for m in results)
    assert loss1 == pytest.approx(loss0, rel=1e-6) and loss2 == pytest.approx(loss0, rel=1e-6)
    for a, b, c in zip(grads0, grads1, grads2):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-7)
    assert flops1 > 1.15 * flops0  # full checkpointing runs the blocks' forward twice
    assert flops2 == flops0  # selective keeps every matmul / conv / attention output: none is recomputed


def test_channels_last_gives_the_same_loss_and_gradients(make_config):
    results = []
    for on in (False, True):
        t = _prepared(make_config, **{"training.channels_last": on})
        try:
            conv = t.model.unet.conv_in.weight
            assert conv.is_contiguous(memory_format=torch.channels_last) == on
            seen = []
            hook = t.model.unet.conv_in.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
            results.append(_loss_grads_flops(t)[:2])
            hook.remove()
            assert seen[0].is_contiguous(memory_format=torch.channels_last) == on  # the noisy latents
        finally:
            t.close()
    (loss0, grads0), (loss1, grads1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_pin_memory_reaches_the_data_loader_and_accelerate(make_config):
    for setting, expected in (("auto", torch.cuda.is_available()), (True, True), (False, False)):
        t = Trainer(make_config("sd15", **{"training.pin_memory": setting}))
        t.setup()
        try:
            t.load_model()
            t.load_data()
            assert t.dataloader.pin_memory is expected
            assert t.accelerator.dataloader_config.non_blocking is expected  # asynchronous host-to-device copies
        finally:
            t.close()


def test_compile_mode_flows_to_torch_compile_and_cuda_graphs_need_one_shape(make_config, monkeypatch, tmp_path):
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    t = Trainer(make_config("sd15", **{"training.torch_compile": True, "training.torch_compile_mode": "max-autotune"}))
    t.setup()
    try:
        t.load_model()
        t.load_data()
        t.setup_network()
    finally:
        t.close()
    assert modes and set(modes) == {"max-autotune"}
    folder = tmp_path / "two-sizes"  # two aspect ratios: two buckets, two shapes
    folder.mkdir()
    for i, size in enumerate([(130, 40), (64, 64)]):
        Image.new("RGB", size, (60 * i, 120, 90)).save(folder / f"{i}.png")
    cfg = make_config("sd15", **{"training.torch_compile": True, "training.torch_compile_mode": "reduce-overhead",
                                 "dataset.instance_dir": str(folder), "dataset.instance_prompt": "a sks shape",
                                 "dataset.enable_bucket": True, "dataset.min_image_size": 16,
                                 "dataset.bucket_reso_steps": 32})
    t = Trainer(cfg)
    t.setup()
    try:
        t.load_model()
        t.load_data()
        with pytest.raises(ConfigError, match="2 image sizes"):
            t.setup_network()
    finally:
        t.close()
    check_static_shapes("reduce-overhead", {(64, 64)})
    check_static_shapes("default", {(64, 64), (64, 96)})
    with pytest.raises(ConfigError, match=r"torch_compile_mode = 'reduce-overhead'.*2 image sizes.*'default'"):
        check_static_shapes("reduce-overhead", {(64, 64), (64, 96)})
    with pytest.raises(ConfigError, match="needs training.torch_compile = true"):
        make_config("sd15", **{"training.torch_compile_mode": "reduce-overhead"})
    assert compile_module.check_static_shapes is check_static_shapes


def test_fp8_base_is_refused_without_a_recent_cuda_gpu(monkeypatch):
    with pytest.raises(ConfigError, match=r"model.quantize_base = 'fp8'.*the cpu device.*'int8'"):
        check_quantize("fp8", "cpu")
    check_quantize("int8", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    with pytest.raises(ConfigError, match="compute capability 8.6"):
        check_quantize("fp8", "cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_quantize("fp8", "cuda:0")  # an H100 / H200


def test_an_int8_base_trains_only_the_lora_and_saves_the_same_file(make_config, tmp_path):
    pytest.importorskip("torchao")
    from safetensors import safe_open
    from torchao.utils import TorchAOBaseTensor

    files = {}
    for mode in ("none", "int8"):
        t = _prepared(make_config, **{"model.quantize_base": mode, "training.max_train_steps": 2,
                                      "output.output_dir": str(tmp_path / mode)})
        try:
            quantized = [m for m in t.model.unet.modules()
                         if isinstance(m, torch.nn.Linear) and isinstance(m.weight, TorchAOBaseTensor)]
            wrapped = [m for m in t.model.unet.modules() if type(m).__name__ == "TorchaoLoraLinear"]
            assert (len(quantized) > 20 and len(wrapped) > 5) == (mode == "int8"), (len(quantized), len(wrapped))
            if mode == "int8":  # the same fixed batch, five steps: the loss goes down, only the LoRA moves
                batch, latents, noise, steps = _fixed_inputs(t)
                trainable = {id(p) for p in t.network_params}
                losses = []
                for _ in range(5):
                    loss = t.compute_loss(batch, latents, noise, steps)
                    loss.backward()
                    with_grad = [n for n, p in t.model.unet.named_parameters() if p.grad is not None]
                    assert with_grad and all(id(p) in trainable for p in t.model.unet.parameters()
                                             if p.grad is not None), with_grad
                    t.optimizer.step()
                    t.optimizer.zero_grad(set_to_none=True)
                    losses.append(loss.item())
                assert losses[-1] < losses[0], losses
            t.train()
            written = t.finish().files
            files[mode] = [written.kohya, written.diffusers]
        finally:
            t.close()
    shapes = {}
    for mode, paths in files.items():
        for path in paths:
            with safe_open(str(path), "pt") as f:
                shapes[mode, path.name] = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                                           for k in f.keys()}
    names = [p.name for p in files["none"]]
    assert [p.name for p in files["int8"]] == names
    for name in names:
        assert shapes["int8", name] == shapes["none", name] and len(shapes["none", name]) > 10


def test_a_quantized_linear_keeps_no_dequantized_weight_for_backward():
    pytest.importorskip("torchao")
    import copy

    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from loraforge.training.quantize import quantize_unet

    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    ours.requires_grad_(False)
    torchao_own = copy.deepcopy(ours)
    quantize_(torchao_own, Int8WeightOnlyConfig())
    assert quantize_unet(ours, "int8", "cpu") == 2
    x = torch.randn(2, 32, 256, requires_grad=True)

    def run(model):
        x.grad = None
        saved = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = model(x)
        y.backward(torch.cos(y.detach()))
        return y.detach(), x.grad.clone(), sum(saved.values())

    (y, grad, kept), (y_ref, grad_ref, kept_ref) = run(ours), run(torchao_own)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)
    weight_bytes = 256 * 256 * 4
    assert kept_ref > weight_bytes and kept < weight_bytes // 2, (kept, kept_ref)  # torchao's keeps fp32 weights
