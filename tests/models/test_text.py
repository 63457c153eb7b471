"""Our prompt encoding must equal what the diffusers pipelines compute at inference time."""

import pytest
import torch

from loraforge.config import load_config
from loraforge.models.loading import load_model
from loraforge.models.text import encode_prompts, encode_tokens, sdxl_time_ids


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


def _chunk_as_prompt(tok, body: list[int]) -> torch.Tensor:
    """A 75-token piece tokenized as a prompt of its own: start, the piece, end, padding to 77."""
    ids = [tok.bos_token_id, *body, tok.eos_token_id]
    return torch.tensor([ids + [tok.pad_token_id] * (77 - len(ids))])


@pytest.mark.parametrize("family,clip_skip", [("sd15", None), ("sd15", 1), ("sdxl", None)])
def test_chunked_prompts_encode_each_75_token_window_as_kohya(tiny_dirs, family, clip_skip):
    """kohya's --max_token_length 150: 2 windows of 75 tokens, each encoded with its own start and end token; the
    conditioning is the first start state, both windows' 75 states and the last window's final state (152)."""
    model = load_model(load_config(None, [f"model.family={family}"]).model)
    long = " ".join(f"word{i}" for i in range(40)) + ", " + " ".join(["robot"] * 20)
    prompts = [long, "a red robot"]
    ours = encode_prompts(model.family, model.tokenizers, model.text_encoders, prompts, clip_skip, 150)
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            windows = []
            for k in range(2):
                ids = []
                for tok in model.tokenizers:
                    body = tok(prompt, add_special_tokens=False).input_ids[75 * k:75 * (k + 1)]
                    ids.append(_chunk_as_prompt(tok, body))
                windows.append(encode_tokens(model.family, model.text_encoders, ids, clip_skip))
            first, second = (w.prompt_embeds for w in windows)
            want = torch.cat([first[:, :1], first[:, 1:76], second[:, 1:76], second[:, 76:]], dim=1)
            assert ours.prompt_embeds.shape[1] == 152
            assert torch.equal(ours.prompt_embeds[row:row + 1], want)
            if family == "sdxl":
                assert torch.allclose(ours.pooled[row:row + 1], windows[0].pooled, atol=1e-6)  # batch 4 vs 1 rounding
    assert len(model.tokenizers[0](long).input_ids) > 77  # the long prompt really spans both windows
    # 75 (kohya's default) is today's single 77-token window, unchanged
    one = encode_prompts(model.family, model.tokenizers, model.text_encoders, prompts, clip_skip, 75)
    assert torch.equal(one.prompt_embeds, encode_prompts(model.family, model.tokenizers, model.text_encoders,
                                                         prompts, clip_skip).prompt_embeds)
    assert one.prompt_embeds.shape[1] == 77
