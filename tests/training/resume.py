"""Shared by the resume tests: an uninterrupted run, a run that checkpoints, a run resumed from that checkpoint."""

import torch
from safetensors.torch import load_file

from loraforge.training.trainer import Trainer


def straight_and_resumed(make_config, family: str, common: dict, save_at: int):
    """Return (uninterrupted result, resumed result, checkpoint folder)."""
    straight = Trainer(make_config(family, **common, **{"output.output_name": "straight"})).run()
    first = Trainer(make_config(family, **common, **{"output.output_name": "first",
                                                      "training.save_every_n_steps": save_at})).run()
    ckpt = first.run_dir / "checkpoints" / f"step-{save_at:06d}"
    resumed = Trainer(make_config(family, **common, **{"output.output_name": "resumed",
                                                        "training.resume": str(ckpt)})).run()
    return straight, resumed, ckpt


def assert_same_tensors(path_a, path_b) -> None:
    a, b = load_file(str(path_a)), load_file(str(path_b))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
