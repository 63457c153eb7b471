"""Sampling during training: the requests built from `[sampling]` and the run."""

from loraforge.config import load_config
from loraforge.sampling.run import sample_requests


def test_unset_sample_size_is_the_training_width_and_height(tmp_path):
    prompt = "dataset.instance_prompt='a photo of sks robot'"
    one = "sampling.num_images_per_prompt=1"
    got = sample_requests(load_config(None, [prompt, one]), [], (64, 96))
    assert [(r.prompt, r.width, r.height) for r in got] == [("a photo of sks robot", 64, 96)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog --w 128\n")
    sets = [prompt, f"sampling.sample_prompts={str(prompts)!r}"]
    got = sample_requests(load_config(None, sets), [], (64, 96))
    assert [(r.prompt, r.width, r.height) for r in got] == [("a cat", 64, 96), ("a dog", 128, 96)]
    one_set = sample_requests(load_config(None, [*sets, "sampling.height=72"]), [], (64, 96))
    assert [(r.width, r.height) for r in one_set] == [(64, 72), (128, 72)]
