"""The judge: a small CNN that reads a scene back from a 64 × 64 image, one classification head per attribute.

`load_judge()` loads the shipped weights (`assets/judge.safetensors`, trained by `scripts/train_judge.py` on
generator images of every shape and fill, held-out ones included, with blur, noise, colour jitter and small shifts so
it also reads imperfect generated images). `judge.read(images)` gives each image's attributes by name,
`judge.probabilities(images)` the class probabilities, and `accuracy(judge, scenes)` the fraction read right per
attribute. The measured accuracy is in `assets/judge.json`.

The network keeps where things are: four conv stages take 64 px down to a 4 × 4 map that is flattened, not pooled
away, so `position` (and size) can be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from ..errors import InputNotFoundError, UnsupportedError
from .scene import ATTRIBUTES, SIZE, Scene, render

ASSETS = Path(__file__).parent / "assets"
WEIGHTS = ASSETS / "judge.safetensors"
REPORT = ASSETS / "judge.json"
TRAIN_COMMAND = "python scripts/train_judge.py"

CHANNELS = (16, 32, 64, 64)  # per stage; each stage halves the side: 64 → 32 → 16 → 8 → 4
HIDDEN = 256


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.MaxPool2d(2))


class Judge(nn.Module):
    """Images [N, 3, 64, 64] in [0, 1] → logits of each attribute in `ATTRIBUTES` ({name: [N, classes]})."""

    def __init__(self):
        super().__init__()
        chans = (3, *CHANNELS)
        self.features = nn.Sequential(*(_stage(a, b) for a, b in zip(chans, chans[1:])))
        side = SIZE >> len(CHANNELS)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS[-1] * side * side, HIDDEN), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(HIDDEN, len(classes)) for name, classes in ATTRIBUTES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(self.features(x * 2 - 1))
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def probabilities(self, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """{attribute: [N, classes]} class probabilities (classes in `ATTRIBUTES` order) of PIL images or a float
        tensor [N, 3, H, W] in [0, 1]; other sizes than 64 px are resized."""
        x = to_tensor(images)
        was_training = self.training
        self.eval()
        try:
            parts = [self(x[i:i + batch_size]) for i in range(0, max(len(x), 1), batch_size)]  # an empty x too
        finally:
            self.train(was_training)
        return {name: torch.cat([p[name] for p in parts]).softmax(-1) for name in ATTRIBUTES}

    def read(self, images, batch_size: int = 256) -> list[dict[str, str]]:
        """Each image's most likely scene: [{"shape": "circle", "colour": "red", ...}, ...]."""
        probs = self.probabilities(images, batch_size)
        best = {name: p.argmax(-1).tolist() for name, p in probs.items()}
        n = len(next(iter(best.values()))) if best else 0
        return [{name: ATTRIBUTES[name][best[name][i]] for name in ATTRIBUTES} for i in range(n)]


def to_tensor(images) -> torch.Tensor:
    """PIL images (one or a list) or a float tensor [N, 3, H, W] / [3, H, W] in [0, 1] → float32 [N, 3, 64, 64]."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the judge reads images as a tensor [N, 3, H, W], not {tuple(images.shape)}")
        if x.shape[-2:] != (SIZE, SIZE):  # box filter down (as `render` does), bilinear up
            down = min(x.shape[-2:]) >= SIZE
            x = F.interpolate(x, size=(SIZE, SIZE), mode="area" if down else "bilinear",
                              align_corners=None if down else False)
        return x.clamp(0, 1)
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (SIZE, SIZE):
            im = im.resize((SIZE, SIZE), Image.Resampling.BOX if min(im.size) >= SIZE else Image.Resampling.BICUBIC)
        arrays.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(SIZE, SIZE, 3))
    if not arrays:
        return torch.zeros(0, 3, SIZE, SIZE)
    return torch.stack(arrays).permute(0, 3, 1, 2).float() / 255


def load_judge(path: str | Path | None = None) -> Judge:
    """The judge with its trained weights (fp16 on disk, float32 here), in eval mode; `path` defaults to the
    shipped `assets/judge.safetensors`."""
    path = Path(path) if path is not None else WEIGHTS
    if not path.is_file():
        raise InputNotFoundError(f"{path}: the judge's weights are missing; train them with `{TRAIN_COMMAND}` "
                                 "(about 7 CPU-minutes), which writes that file")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors' own error for a file it cannot parse
        raise UnsupportedError(f"{path}: not a readable .safetensors file ({e}); train the judge again with "
                               f"`{TRAIN_COMMAND}`, which rewrites it") from None
    judge = Judge()
    expected = judge.state_dict()
    wrong = sorted(set(expected) ^ set(state)) + sorted(
        k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if wrong:
        raise UnsupportedError(f"{path}: not the judge's weights (tensors missing, extra or of another shape: "
                               f"{', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}); train the judge again "
                               f"with `{TRAIN_COMMAND}`, which rewrites it")
    judge.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return judge.eval()


def accuracy(judge: Judge, scenes: Sequence[Scene], images=None) -> dict[str, float]:
    """The fraction of `scenes` whose attribute the judge reads right, per attribute; `images` are the scenes'
    pictures (default: `render(scene)`; pass generated or degraded ones to judge those)."""
    if not scenes:
        raise ValueError("accuracy needs at least one scene")
    read = judge.read(images if images is not None else [render(s) for s in scenes])
    if len(read) != len(scenes):
        raise ValueError(f"{len(scenes)} scenes but {len(read)} images")
    return {name: sum(r[name] == getattr(s, name) for r, s in zip(read, scenes)) / len(scenes) for name in ATTRIBUTES}
