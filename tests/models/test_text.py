"""Our prompt encoding must equal what the diffusers pipelines compute at inference time."""

import pytest
import torch

from loraforge.config import load_config
from loraforge.models.loading import load_model
from loraforge.models.text import encode_prompts, sdxl_time_ids


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("clip_skip", [None, 1])
def test_encode_prompts_matches_pipeline(tiny_dirs, family, clip_skip):
    model = load_model(load_config(None, [f"model.family={family}"]).model)
    pipe = model.pipeline()
    prompts = ["a photo of sks robot", "a red robot on the moon, high detail"]
    ours = encode_prompts(model.family, model.tokenizers, model.text_encoders, prompts, clip_skip)
    with torch.no_grad():
        if family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False,
                                                      clip_skip=clip_skip)
            assert torch.equal(ours.pooled, pooled)
        else:
            if clip_skip is None:
                embeds, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
            else:
                # diffusers' SD pipeline reaches `text_encoder.text_model.final_layer_norm`, a level transformers 5
                # removed, so check the formula it implements: layer -(clip_skip+1), then the final layer norm.
                te = model.text_encoders[0]
                ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt").input_ids
                hidden = te(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
                embeds = te.final_layer_norm(hidden)
                assert not torch.equal(embeds, te(ids)[0])
    assert torch.equal(ours.prompt_embeds, embeds)


def test_sdxl_time_ids_layout():
    ids = sdxl_time_ids([(768, 1024), (512, 512)], [(0, 128), (10, 0)], (1024, 1024))
    assert ids.tolist() == [[768, 1024, 0, 128, 1024, 1024], [512, 512, 10, 0, 1024, 1024]]
