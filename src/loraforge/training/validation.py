"""The validation loss: the training loss of the held-out images (`data.validation`) at fixed timesteps with fixed
noise, so the number compares across steps and runs.

Each held-out image is scored at `validation_timesteps` timesteps evenly spaced in [min_timestep, max_timestep)
(kohya's 4: 200, 400, 600, 800), one batch of copies of the image; the noise of (image, timestep) comes from a
generator seeded by (validation seed, image, timestep). Nothing draws from the global RNG, so validating does not
change the training that follows (a resumed run stays exact), and the trained modules are in eval mode meanwhile
(no network dropout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.dataset import collate
from .timesteps import timestep_range


def fixed_timesteps(training, num_timesteps: int) -> list[int]:
    """`training.validation_timesteps` timesteps evenly spaced inside [min_timestep, max_timestep)."""
    low, high = timestep_range(training, num_timesteps)
    n = training.validation_timesteps
    return [low + (k + 1) * (high - low) // (n + 1) for k in range(n)]


def fixed_noise(shape: tuple[int, ...], seed: int, image: int, timesteps: list[int]) -> torch.Tensor:
    """The noise of one held-out image at each of its timesteps (one row each): the same at every evaluation."""
    rows = []
    for t in timesteps:
        key = int(np.random.default_rng([seed, image, t]).integers(2**62))
        rows.append(torch.randn(shape, generator=torch.Generator().manual_seed(key)))
    return torch.stack(rows)


@dataclass
class Validation:
    dataset: object  # the held-out `ImageCaptionDataset`
    seed: int
    every_n_steps: int | None
    every_n_epochs: int | None
    timesteps: list[int]
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss) of this session

    @classmethod
    def from_config(cls, training, dataset, num_timesteps: int) -> "Validation | None":
        if dataset is None:
            return None
        seed = training.seed if training.validation_seed is None else training.validation_seed
        return cls(dataset, seed, training.validate_every_n_steps, training.validate_every_n_epochs,
                   fixed_timesteps(training, num_timesteps))

    def due(self, count: int, every: int | None) -> bool:
        return bool(every) and count % every == 0

    def evaluate(self, step) -> float:
        """The mean loss over the held-out images (each the mean over the fixed timesteps), with `step` (a
        `LossStep`) computing the loss exactly as training does."""
        n = len(self.timesteps)
        total = 0.0
        with torch.no_grad():
            for i in range(len(self.dataset)):
                batch = collate([self.dataset[(0, i)]] * n)
                if "latents" in batch:
                    latents = batch["latents"].to(step.device, dtype=step.weight_dtype)
                else:
                    latents = step.encode_latents(batch["pixel_values"], batch["latent_seeds"])
                noise = fixed_noise(tuple(latents.shape[1:]), self.seed, i, self.timesteps)
                ts = torch.tensor(self.timesteps, dtype=torch.long)
                total += step.compute_loss(batch, latents, noise, ts).item()
        return total / len(self.dataset)
