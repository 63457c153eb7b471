import pytest

from loraforge.sampling.generate import SampleRequest
from loraforge.sampling.prompts import PromptFileError, parse_prompt_line, read_prompt_file
from loraforge.sampling.samplers import SAMPLERS, make_scheduler


def test_kohya_prompt_line_options():
    base = SampleRequest(prompt="", width=512, height=512, steps=25, guidance_scale=7.0, seed=0)
    r = parse_prompt_line("masterpiece, 1girl --n lowres, bad hands --w 832 --h 1216 --d 42 --l 6.5 --s 28 --ss k_euler", base)
    assert r == SampleRequest("masterpiece, 1girl", "lowres, bad hands", 832, 1216, 28, 6.5, 42, "k_euler")


def test_prompt_file_comments_and_errors(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# a comment\n\na cat --d 3\na dog --w 100\n")
    with pytest.raises(PromptFileError, match=r"prompts.txt:4: width 100 is not a multiple of 8"):
        read_prompt_file(f, SampleRequest(""))
    f.write_text("# only\na cat --d 3\na dog --s 5 --ss euler_a\n")
    reqs = read_prompt_file(f, SampleRequest("", seed=9))
    assert [(r.prompt, r.seed, r.steps) for r in reqs] == [("a cat", 3, 25), ("a dog", 9, 5)]
    with pytest.raises(PromptFileError, match="--l 'x'"):
        parse_prompt_line("a --l x", SampleRequest(""))


def test_every_kohya_sampler_builds_from_a_model_config(tiny_dirs):
    from diffusers import PNDMScheduler

    base = PNDMScheduler.from_pretrained(str(tiny_dirs["sd15"]), subfolder="scheduler").config
    for name in SAMPLERS:
        sched = make_scheduler(name, base, "v_prediction")
        assert sched.config.prediction_type == "v_prediction"
        assert sched.config.beta_schedule == "scaled_linear"
    assert make_scheduler("k_euler", base).config.use_karras_sigmas
    assert type(make_scheduler("euler_a", base)).__name__ == "EulerAncestralDiscreteScheduler"
