"""Training must be able to learn: every algo overfits one fixed batch (fixed latents, noise and timesteps) on both
tiny families.

All runs use the `full` preset. The LyCORIS algos (`locon`, `loha`, `lokr`, `dora`) then adapt the resnet and
sampler convolutions of every level too, and the loss falls by about 75-85 % in 12 steps (measured 0.14-0.25 of the
first loss at 10 steps); we assert ≥ 65 %. `lora` adapts linear and 1×1 layers only: the tiny SDXL (the real SDXL
layout) has no attention at its full-resolution level, so a linear-only adapter can only shape the prediction at
half resolution and falls more slowly (measured -36 % SDXL, -50 % SD 1.5 at 10 steps; attention-only LoRA on SDXL
levels off near -30 % even after 40 steps); we assert ≥ 25 %.
"""

import pytest
import torch

from loraforge.data.dataset import collate
from loraforge.training.trainer import Trainer

STEPS = 12
MIN_FALL = {"lora": 0.25, "locon": 0.65, "loha": 0.65, "lokr": 0.65, "dora": 0.65}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", list(MIN_FALL))
def test_overfit_one_fixed_batch(make_config, family, algo):
    cfg = make_config(family, **{"optimizer.learning_rate": 1e-2, "network.algo": algo, "network.preset": "full"})
    t = Trainer(cfg)
    t.prepare()
    try:
        batch = collate([t.dataset[0], t.dataset[1]])
        torch.manual_seed(0)
        latents = t.encode_latents(batch["pixel_values"])
        noise = torch.randn_like(latents)
        timesteps = torch.tensor([250, 650])
        losses = []
        for _ in range(STEPS):
            loss = t.compute_loss(batch, latents, noise, timesteps)
            t.accelerator.backward(loss)
            t.optimizer.step()
            t.optimizer.zero_grad()
            losses.append(loss.item())
    finally:
        t.close()
    assert losses[-1] < (1 - MIN_FALL[algo]) * losses[0], losses
