"""`training.blocks_to_swap` on the embedded tiny FLUX (4 blocks): a swapped run computes exactly what an unswapped
one does (losses, gradients, LoRA file, samples), never holds more than (blocks − N) blocks' frozen weights on the
device, copies 2 × N blocks a step after the first, and refuses what it cannot honour."""

import numpy as np
import pytest
import torch
from PIL import Image

from loraforge.errors import ConfigError
from loraforge.training.block_swap import _data_tensors
from loraforge.training.trainer import Trainer

from .resume import assert_same_tensors
from .test_flux_training import SHORT_T5, _fixed, _prepared

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
CHECKPOINTED = {"training.gradient_checkpointing": True}


def _frozen_bytes(block) -> int:
    """Bytes of `block`'s frozen weights that hold memory now."""
    return sum(t.untyped_storage().nbytes() for p in block.parameters() if not p.requires_grad
               for t in _data_tensors(p.data))


def _steps(t: Trainer, n: int, check=None) -> tuple[list[float], dict]:
    batch, latents, noise, timesteps = _fixed(t)
    losses = []
    for _ in range(n):
        loss = t.compute_loss(batch, latents, noise, timesteps)
        t.accelerator.backward(loss)
        if check:
            check()
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, {k: v.clone() for k, v in t.network.state_dict().items()}


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_swapped_steps_equal_unswapped_and_keep_the_limit(make_config, quantize):
    if quantize != "none":
        pytest.importorskip("torchao")
    common = {**CHECKPOINTED, "model.quantize_base": quantize, "optimizer.learning_rate": 1e-2}
    plain = _prepared(make_config, **{**common, "output.output_name": "plain"})
    try:
        want_losses, want = _steps(plain, 2)
    finally:
        plain.close()

    t = _prepared(make_config, **{**common, "training.blocks_to_swap": 2})
    try:
        swap = t.block_swap
        blocks = swap.blocks
        assert len(blocks) == 4 and swap.capacity == 2
        full = [sum(n for _, _, n in held) for held in swap._held]
        assert all(_frozen_bytes(b) == 0 for b in blocks)  # installed: every block's weights out
        # the adapter's factors stay on the device, resident or not
        assert all(p.untyped_storage().nbytes() > 0 for p in t.network_params)
        seen = []

        def watch(block, args, kwargs=None):  # runs after the swap's own hook: the block about to run
            i = blocks.index(block)
            held = [j for j, b in enumerate(blocks) if _frozen_bytes(b)]
            assert _frozen_bytes(block) == full[i] and len(held) <= swap.capacity, (i, held)
            seen.append(i)

        hooks = [b.register_forward_pre_hook(watch) for b in blocks]
        losses, got = _steps(t, 2)
        for h in hooks:
            h.remove()
        # forward passes alone (as sampling runs them, one per denoising step): the block that ran last leaves, so a
        # pass copies N or N + 1 blocks, not all 4 (what evicting the least recently run block would copy)
        train_copies, (batch, latents, noise, timesteps) = swap.copies, _fixed(t)
        with torch.no_grad():
            for _ in range(3):
                t.compute_loss(batch, latents, noise, timesteps)
        assert swap.copies - train_copies <= 3 * (2 + 1), swap.copies - train_copies
    finally:
        t.close()
    assert losses == want_losses
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # forward 0..3, then the backward's recomputation 3..0, twice
    assert seen == [0, 1, 2, 3, 3, 2, 1, 0] * 2
    # first step: 4 copies in the forward (from empty) + 2 in the backward; then 2 + 2 a step (N in each pass)
    assert swap.peak == 2 and train_copies == 4 + 2 + 2 * 2


def test_a_run_resumed_with_block_swap_writes_the_same_lora_and_samples(make_config):
    """Whole runs through `Trainer.run`: a run without block swap checkpoints at step 1; resumed from there with
    `blocks_to_swap = 3` (a smaller GPU: the option may change on resume), it writes the same LoRA file and draws
    the same sample at the end (no gradients there: the hooks alone bring the blocks in)."""
    common = {**SHORT_T5, **CHECKPOINTED, "training.max_train_steps": 2, "sampling.at_end": True,
              "sampling.validation_prompts": ["a photo"], "sampling.width": 64, "sampling.height": 64}
    plain = Trainer(make_config("flux", **{**common, "output.output_name": "plain",
                                           "training.save_every_n_steps": 1})).run()
    swapped = Trainer(make_config("flux", **{**common, "output.output_name": "swapped", "training.blocks_to_swap": 3,
                                             "training.resume": str(plain.run_dir / "checkpoints" / "step-000001")})
                      ).run()
    assert_same_tensors(plain.files.kohya, swapped.files.kohya)
    samples = [sorted((r.run_dir / "samples").glob("*.png")) for r in (plain, swapped)]
    pixels = [[np.asarray(Image.open(p)) for p in run] for run in samples]
    assert pixels[0] and len(pixels[0]) == len(pixels[1])
    assert all(np.array_equal(a, b) for a, b in zip(*pixels))
    assert "training.blocks_to_swap = 3: 1 of 4 blocks on the device at a time" in (
        swapped.run_dir / "train.log").read_text()


def test_a_weight_used_while_out_raises(make_config):
    """Out means out: a swapped-out layer called directly (past the block's hook) fails instead of reading memory
    that is no longer its own."""
    t = _prepared(make_config, **{**CHECKPOINTED, "training.blocks_to_swap": 1})
    try:
        layer = next(m for m in t.block_swap.blocks[0].modules() if type(m) is torch.nn.Linear)
        with pytest.raises(RuntimeError, match="storage"):
            layer(torch.zeros(1, layer.in_features))
        t.block_swap.enter(0)
        assert layer(torch.zeros(1, layer.in_features)).shape == (1, layer.out_features)
    finally:
        t.close()


@pytest.mark.parametrize("family,overrides,match", [
    ("flux", {"training.blocks_to_swap": 2}, "needs training.gradient_checkpointing"),
    ("flux", {**CHECKPOINTED, "training.blocks_to_swap": 2, "training.torch_compile": True}, "torch_compile"),
    ("sd15", {**CHECKPOINTED, "training.blocks_to_swap": 2}, "swaps the blocks of FLUX.1's transformer"),
])
def test_what_block_swap_cannot_honour_is_refused(make_config, family, overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_config(family, **overrides)


def test_swapping_every_block_is_refused(make_config):
    t = Trainer(make_config("flux", **{**SHORT_T5, **CHECKPOINTED, "training.blocks_to_swap": 4}))
    try:
        with pytest.raises(ConfigError, match="has 4 blocks and at least one must stay on the device: set it to 3"):
            t.prepare()
    finally:
        t.close()
