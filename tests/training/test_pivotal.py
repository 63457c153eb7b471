"""Pivotal tuning: new tokens in every text encoder, only their rows train, files diffusers/A1111/ComfyUI read."""

import pytest
import torch
from safetensors.torch import load_file

from loraforge.config import ConfigError, load_config
from loraforge.training.trainer import Trainer


def ti_config(make_config, family, folder, **kw):
    return make_config(family, **{
        "dataset.instance_dir": str(folder), "dataset.instance_prompt": "a photo of TOK robot",
        "training.train_text_encoder_ti": True, "training.max_train_steps": 6,
        "optimizer.learning_rate": 1e-2, "sampling.validation_prompts": ["TOK on the moon"], **kw,
    })


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_pivotal_tuning_end_to_end(make_config, tiny_dirs, tok_images, family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cfg = ti_config(make_config, family, tok_images, **{"sampling.at_end": True})
    t = Trainer(cfg)
    t.prepare()
    # tokens in every tokenizer, abstraction replaced in captions
    assert t.pivotal.tokens == ["<s0>", "<s1>"]
    # (the replacement is the last step of caption processing: items keep their text, samples get the tokens)
    assert all(t.dataset.caption(i) == "a photo of <s0><s1> robot" for i in range(len(t.dataset)))
    n_te = 2 if family == "sdxl" else 1
    assert len(t.pivotal.layers) == n_te
    old_tables = [layer.base.weight.detach().clone() for layer in t.pivotal.layers]
    initial = [v.clone() for v in t.pivotal.vectors()]
    # only the new rows are optimised: no optimizer state for the vocabulary
    emb_group = [g for g in t.optimizer.optimizer.param_groups if g["name"] == "embeddings"][0]
    assert [tuple(p.shape) for p in emb_group["params"]] == [(2, te.config.hidden_size) for te in t.model.text_encoders]
    t.train()
    result = t.finish()
    for old, layer in zip(old_tables, t.pivotal.layers):
        assert torch.equal(old, layer.base.weight), "an old embedding row changed"
    trained = t.pivotal.vectors()
    assert all(not torch.equal(a, b) for a, b in zip(initial, trained))
    # the embeddings file: clip_l / clip_g for SDXL, emb_params for SD 1.x
    emb_file = result.run_dir / f"run-{family}_emb.safetensors"
    assert result.files.embeddings == emb_file
    sd = load_file(str(emb_file))
    keys = ["clip_l", "clip_g"] if family == "sdxl" else ["emb_params"]
    assert sorted(sd) == sorted(keys)
    for k, v in zip(keys, trained):
        assert torch.equal(sd[k], v)
    # diffusers' load_textual_inversion reproduces the trained embeddings
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(tiny_dirs[family]), local_files_only=True)
    toks = ["<s0>", "<s1>"]
    pipe.load_textual_inversion(sd[keys[0]], token=toks, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    if family == "sdxl":
        pipe.load_textual_inversion(sd["clip_g"], token=toks, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    for te, tok, vec in zip(encoders, tokenizers, trained):
        ids = tok.convert_tokens_to_ids(toks)
        torch.testing.assert_close(te.get_input_embeddings().weight[ids], vec)
    # the samples' parameters are what A1111 takes with the run's files: the embedding file's name for the
    # abstraction (not the <s0><s1> the model was sampled with) and the LoRA tag
    from PIL import Image

    text = Image.open(result.run_dir / "samples" / "final_0.png").text["parameters"]
    assert text.startswith(f"run-{family}_emb on the moon <lora:run-{family}:1>\n"), text
    assert f"Model: tiny-{family}" in text


def test_embeddings_freeze_at_the_pivot(make_config, tok_images):
    cfg = ti_config(make_config, "sd15", tok_images, **{"training.train_text_encoder_ti_frac": 0.5})
    t = Trainer(cfg)
    t.prepare()
    snapshots = []
    original = t.compute_loss

    def spy(batch, *a, **kw):
        snapshots.append((t.state.global_step, t.pivotal.vectors()[0].clone()))
        return original(batch, *a, **kw)

    t.compute_loss = spy
    t.train()
    t.close()
    assert t.pivot_at == 3
    values = {step: v for step, v in snapshots}
    assert not torch.equal(values[1], values[2])  # still learning before the pivot
    assert torch.equal(values[3], values[5]) and torch.equal(t.pivotal.vectors()[0], values[3])


def test_initializer_token(make_config, tok_images):
    cfg = ti_config(make_config, "sd15", tok_images, **{"training.initializer_token": "robot"})
    t = Trainer(cfg)
    t.prepare()
    t.close()
    tok = t.model.tokenizers[0]
    ids = tok("robot", add_special_tokens=False).input_ids
    want = t.pivotal.layers[0].base.weight[ids].float().mean(0)
    for row in t.pivotal.vectors()[0]:
        torch.testing.assert_close(row, want)


def test_resume_restores_embeddings_bit_exactly(make_config, tok_images):
    common = {"training.train_text_encoder_ti_frac": 0.75}
    straight = Trainer(ti_config(make_config, "sd15", tok_images, **common, **{"output.output_name": "a"})).run()
    first = Trainer(ti_config(make_config, "sd15", tok_images, **common, **{"output.output_name": "b",
                                                                               "training.save_every_n_steps": 2})).run()
    ckpt = first.run_dir / "checkpoints" / "step-000002"
    assert (ckpt / "embeddings.safetensors").is_file() and (ckpt / "b-step00000002_emb.safetensors").is_file()
    resumed = Trainer(ti_config(make_config, "sd15", tok_images, **common, **{"output.output_name": "c",
                                                                                 "training.resume": str(ckpt)})).run()
    a, b = load_file(str(straight.files.embeddings)), load_file(str(resumed.files.embeddings))
    assert torch.equal(a["emb_params"], b["emb_params"])
    ka, kb = load_file(str(straight.files.kohya)), load_file(str(resumed.files.kohya))
    assert all(torch.equal(ka[k], kb[k]) for k in ka)


def test_pivotal_and_text_encoder_lora_train_together_only_in_phases():
    with pytest.raises(ConfigError, match="train together only in phases: set training.ti_steps"):
        load_config(None, ["network.train_text_encoder=true", "training.train_text_encoder_ti=true"])
    cfg = load_config(None, ["network.train_text_encoder=true", "training.train_text_encoder_ti=true",
                             "training.ti_steps=2"])
    assert cfg.training.ti_steps == 2


def test_pivotal_tuning_without_the_abstraction_in_any_caption_is_refused(make_config):
    from loraforge.errors import DataError

    # the demo images have captions without TOK: the new tokens could never learn
    t = Trainer(make_config("sd15", **{"training.train_text_encoder_ti": True}))
    with pytest.raises(DataError, match="no caption contains the token abstraction 'TOK'"):
        t.prepare()
    t.close()
