"""FLUX.1 pivotal tuning on the embedded tiny FLUX, as diffusers' advanced FLUX script does it: the new tokens go to
CLIP-L (T5 reads `<s0><s1>` as text) or, with `training.train_t5_ti` (`--enable_t5_ti`), to T5 too; only their rows
train; the embeddings file is `{"clip_l"}` / `{"clip_l", "t5"}` and diffusers' `load_textual_inversion` rebuilds the
trained conditioning from it; a resumed run is bit-exact."""

import pytest
import torch
from safetensors.torch import load_file

from loraforge.config import ConfigError, load_config
from loraforge.config.importer import import_text
from loraforge.errors import DataError, RunFolderError
from loraforge.formats.embeddings import check_embedding_file, load_embeddings
from loraforge.models.text import encode_prompts
from loraforge.models.tiny import tiny_model_dir
from loraforge.training.pivotal import ExtendedEmbedding, PivotalTuning
from loraforge.training.plan import plan_run
from loraforge.training.trainer import Trainer

from .resume import assert_same_tensors, straight_and_resumed
from .test_flux_training import SHORT_T5

CAPTION = "a photo of <s0><s1> robot"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def flux_ti(folder, **kw) -> dict:
    return {**SHORT_T5, "dataset.instance_dir": str(folder), "dataset.instance_prompt": "a photo of TOK robot",
            "training.train_text_encoder_ti": True, "training.max_train_steps": 4, "optimizer.learning_rate": 1e-2,
            **kw}


def _run(make_config, folder, **kw):
    """Prepare, snapshot the tables, train, finish: (trainer, result, CLIP table before, T5 table before)."""
    t = Trainer(make_config("flux", **flux_ti(folder, **kw)))
    t.prepare()
    clip, t5 = t.model.text_encoders
    tables = [clip.get_input_embeddings().base.weight.detach().clone(),
              _table(t5).detach().clone()]
    initial = [v.clone() for v in t.pivotal.vectors()]
    t.train()
    return t, t.finish(), tables, initial


def _table(te) -> torch.Tensor:
    emb = te.get_input_embeddings()
    return emb.base.weight if isinstance(emb, ExtendedEmbedding) else emb.weight


def test_clip_l_alone_learns_the_tokens_and_t5_reads_them_as_text(make_config, tok_images):
    t, result, (clip_before, t5_before), initial = _run(make_config, tok_images, **{
        "sampling.at_end": True, "sampling.validation_prompts": ["TOK on the moon"]})
    clip, t5 = t.model.text_encoders
    clip_tok, t5_tok = t.model.tokenizers
    # the tokens went to CLIP-L only, numbered after its table; T5's tokenizer and table are the model's
    assert len(t.pivotal.layers) == 1 and isinstance(clip.get_input_embeddings(), ExtendedEmbedding)
    assert t.pivotal.token_ids == [[49408, 49409]] and clip_tok.convert_tokens_to_ids(["<s0>", "<s1>"]) == [49408, 49409]
    assert not isinstance(t5.get_input_embeddings(), ExtendedEmbedding) and "<s0>" not in t5_tok.get_vocab()
    assert t5_tok.tokenize(CAPTION)[3:11] == ["▁<", "s", "0", ">", "<", "s", "1", ">"]  # text, as diffusers' script
    # only the new CLIP rows trained: every old row, and all of T5, bit-identical
    assert torch.equal(clip.get_input_embeddings().base.weight, clip_before)
    assert torch.equal(t5.get_input_embeddings().weight, t5_before)
    assert all(not p.requires_grad for p in t5.parameters())
    trained = t.pivotal.vectors()
    assert not torch.equal(trained[0], initial[0])
    # the file: {"clip_l": [2, 768 here 32]}, read back as the consumers read it
    assert result.files.embeddings == result.run_dir / "run-flux_emb.safetensors"
    sd = load_file(str(result.files.embeddings))
    assert list(sd) == ["clip_l"] and sd["clip_l"].shape == (2, 32) and torch.equal(sd["clip_l"], trained[0])
    assert torch.equal(load_embeddings(result.files.embeddings)["clip_l"], trained[0])
    log = (result.run_dir / "train.log").read_text()
    assert "check run-flux_emb.safetensors: clip_l 2×32: clip_l loads in ComfyUI, Forge and diffusers" in log, log
    assert "pivotal tuning: TOK → <s0><s1> in 1 text encoder(s) (clip_l)" in log
    # samples were drawn with the new tokens; their parameters carry A1111's trigger (the file's name)
    from PIL import Image

    text = Image.open(result.run_dir / "samples" / "final_0.png").text["parameters"]
    assert text.startswith("run-flux_emb on the moon <lora:run-flux:1>\n"), text
    # diffusers' load_textual_inversion into a fresh FluxPipeline gives the trained conditioning
    _assert_pipeline_reproduces(t, sd)


def test_t5_ti_trains_t5_rows_over_its_padding_rows(make_config, tok_images):
    t, result, (clip_before, t5_before), initial = _run(make_config, tok_images, **{"training.train_t5_ti": True})
    clip, t5 = t.model.text_encoders
    t5_tok = t.model.tokenizers[1]
    layer = t5.get_input_embeddings()
    assert len(t.pivotal.layers) == 2 and isinstance(layer, ExtendedEmbedding)
    assert t5.encoder.embed_tokens is layer and t5.shared is layer  # T5's tied table, both names
    # T5's table (256 rows) is padded past its tokenizer (231 tokens): the new ids follow the tokenizer, inside it
    start = 231
    assert t5_before.shape[0] == 256 and t.pivotal.token_ids[1] == [start, start + 1]
    pieces = t5_tok.tokenize(CAPTION)
    assert pieces[pieces.index("<s0>") + 1] == "<s1>" and "s" not in pieces  # two tokens, no text pieces
    assert layer.num_embeddings == 256
    trained = t.pivotal.vectors()
    assert all(not torch.equal(a, b) for a, b in zip(trained, initial))
    # the tokens' old rows and the untouched padding rows are bit-identical; the new ids read the trained rows
    assert torch.equal(layer.base.weight, t5_before) and torch.equal(clip.get_input_embeddings().base.weight, clip_before)
    w = layer.weight.detach()
    assert torch.equal(w[:start], t5_before[:start]) and torch.equal(w[start + 2:], t5_before[start + 2:])
    assert torch.equal(w[start:start + 2], trained[1])
    sd = load_file(str(result.files.embeddings))
    assert sorted(sd) == ["clip_l", "t5"] and sd["t5"].shape == (2, 32)
    assert torch.equal(sd["clip_l"], trained[0]) and torch.equal(sd["t5"], trained[1])
    summary, problems = check_embedding_file(result.files.embeddings, "flux", [32, 32])
    assert problems == [] and summary.startswith("clip_l 2×32, t5 2×32: clip_l loads in ComfyUI, Forge and diffusers; "
                                                 "t5 in diffusers only"), summary
    _assert_pipeline_reproduces(t, sd)
    # A1111's .pt holds one encoder's vectors: `loraforge convert` says so instead of dropping T5's
    from loraforge.errors import UnsupportedError
    from loraforge.tools.convert import convert

    with pytest.raises(UnsupportedError, match="a FLUX.1 embedding with T5 vectors; A1111's .pt holds one"):
        convert(result.files.embeddings, result.run_dir / "x.pt")
    # `loraforge sample`'s loader puts both tensors into a fresh model under the trigger
    from loraforge.tools.common import load_sd_model
    from loraforge.tools.sample import EmbeddingSpec, load_embedding

    fresh = load_sd_model(str(tiny_model_dir("flux")))
    load_embedding(fresh, EmbeddingSpec(str(result.files.embeddings), "<krk>"))
    for tok, te, v in zip(fresh.tokenizers, fresh.text_encoders, trained):
        ids = tok.convert_tokens_to_ids(["<krk>", "<krk>_1"])
        assert torch.equal(te.get_input_embeddings().weight[ids].detach(), v)


def _assert_pipeline_reproduces(t: Trainer, sd: dict) -> None:
    """diffusers' `load_textual_inversion` (CLIP-L, and T5 when the file has `t5`) into a fresh FluxPipeline encodes
    the trained caption as the trained model does."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(tiny_model_dir("flux")), local_files_only=True)
    toks = ["<s0>", "<s1>"]
    pipe.load_textual_inversion(sd["clip_l"], token=toks, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    if "t5" in sd:
        pipe.load_textual_inversion(sd["t5"], token=toks, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(CAPTION, CAPTION, max_sequence_length=16)
        mine = encode_prompts(t.model.family, t.model.tokenizers, t.model.text_encoders, [CAPTION])
        base_pipe = FluxPipeline.from_pretrained(str(tiny_model_dir("flux")), local_files_only=True)
        base_embeds, base_pooled, _ = base_pipe.encode_prompt(CAPTION, CAPTION, max_sequence_length=16)
    torch.testing.assert_close(pooled, mine.pooled)
    torch.testing.assert_close(embeds, mine.prompt_embeds)
    assert not torch.allclose(pooled, base_pooled)  # the tokens changed CLIP-L's vector
    assert torch.allclose(embeds, base_embeds) != ("t5" in sd)  # and T5's sequence only with T5 TI


def test_resume_is_bit_exact_with_t5_ti(make_config, tok_images):
    common = flux_ti(tok_images, **{"training.train_t5_ti": True, "training.train_text_encoder_ti_frac": 0.75})
    straight, resumed, ckpt = straight_and_resumed(make_config, "flux", common, save_at=2)
    assert (ckpt / "embeddings.safetensors").is_file()
    assert sorted(load_file(str(ckpt / "embeddings.safetensors"))) == ["embeddings.0", "embeddings.1"]
    assert resumed.losses == straight.losses[2:]
    assert_same_tensors(straight.files.embeddings, resumed.files.embeddings)
    assert_same_tensors(straight.files.diffusers, resumed.files.diffusers)
    # a checkpoint of the other T5 choice is refused with the option to set
    pivotal = PivotalTuning(make_config("flux", **flux_ti(tok_images)).training)
    pivotal.layers, pivotal.keys = [ExtendedEmbedding(torch.nn.Embedding(4, 2), torch.zeros(2, 2))], ("clip_l",)
    with pytest.raises(RunFolderError, match="embeddings of 2 text encoder.*this run trains 1 .*train_t5_ti"):
        pivotal.load_state_dict(load_file(str(ckpt / "embeddings.safetensors")))


def test_config_plan_preset_and_cache(make_config, tok_images):
    # the plan says where the tokens go
    cfg = make_config("flux", **flux_ti(tok_images, **{"training.max_train_steps": 10}))
    text = plan_run(cfg).describe(cfg)
    assert ("pivotal tuning: new tokens TOK → <s0><s1> (in clip_l; t5 reads them as text, as in diffusers' advanced "
            "FLUX script: training.train_t5_ti gives it the tokens too); steps 1-5: embeddings (lr 0.01) and "
            "transformer lora together, steps 6-10: transformer lora alone") in text, text
    cfg = make_config("flux", **flux_ti(tok_images, **{"training.train_t5_ti": True}))
    assert "TOK → <s0><s1> (in clip_l and t5: training.train_t5_ti)" in plan_run(cfg).describe(cfg)
    # the seed-guide presets turn pivotal tuning on: with FLUX they now keep it (and drop min-SNR)
    flux = load_config(None, ["preset='face'", "model.family='flux'"])
    assert flux.training.train_text_encoder_ti and not flux.training.train_t5_ti and flux.training.snr_gamma is None
    # T5 TI needs pivotal tuning and a family with T5; cached text outputs would be stale
    with pytest.raises(ConfigError, match="training.train_t5_ti set, but training.train_text_encoder_ti is off"):
        make_config("flux", **{"training.train_t5_ti": True})
    with pytest.raises(ConfigError, match="train_t5_ti gives FLUX's T5 encoder the new tokens; SDXL has no T5"):
        make_config("sdxl", **{"training.train_text_encoder_ti": True, "training.train_t5_ti": True})
    with pytest.raises(DataError, match="cache_text_encoder_outputs cannot be combined with "
                                        "training.train_text_encoder_ti: pivotal"):
        t = Trainer(make_config("flux", **flux_ti(tok_images, **{"dataset.cache_text_encoder_outputs": True})))
        try:
            t.prepare()
        finally:
            t.close()
    # diffusers' flag is known (and on an SDXL script refused with the reason)
    r = import_text("python train_dreambooth_lora_sdxl_advanced.py --train_text_encoder_ti --enable_t5_ti")
    assert {u.flag: u.reason for u in r.unmapped}["--enable_t5_ti"].startswith(
        "refused by loraforge: training.train_t5_ti gives FLUX's T5 encoder the new tokens; SDXL has no T5")
