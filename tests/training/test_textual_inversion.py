"""Textual inversion alone (`network.algo = "none"`) and phased pivotal tuning (`training.ti_steps`, cloneofsimo's
lora_pti), with custom token names (`training.token_names`)."""


import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from loraforge.errors import TrainingError
from loraforge.training.trainer import Trainer


def ti_config(make_config, family, folder, **kw):
    return make_config(family, **{
        "dataset.instance_dir": str(folder), "dataset.instance_prompt": "a photo of TOK robot",
        "training.train_text_encoder_ti": True, "training.max_train_steps": 3, "optimizer.learning_rate": 1e-2,
        "sampling.validation_prompts": ["TOK on the moon"], **kw,
    })


def frozen_weights(t: Trainer) -> dict[str, torch.Tensor]:
    """Every UNet and text-encoder tensor except the new embedding rows."""
    out = {f"unet.{k}": v.detach().clone() for k, v in t.model.unet.state_dict().items()}
    for i, te in enumerate(t.model.text_encoders):
        out.update({f"te{i}.{k}": v.detach().clone() for k, v in te.state_dict().items() if not k.endswith(".new")})
    return out


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_textual_inversion_alone(make_config, tok_images, family):
    from loraforge.tools.sample import EmbeddingSpec, prepare_model

    cfg = ti_config(make_config, family, tok_images, **{"network.algo": "none", "sampling.at_end": True})
    t = Trainer(cfg)
    t.prepare()
    assert t.network.parts == () and t.network_params == []
    assert [g["name"] for g in t.optimizer.optimizer.param_groups] == ["embeddings"]
    before, initial = frozen_weights(t), t.pivotal.vectors()
    t.train()
    result = t.finish()
    after = frozen_weights(t)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a UNet or text-encoder weight changed"
    trained = t.pivotal.vectors()
    assert all(not torch.equal(a, b) for a, b in zip(initial, trained))  # trained every step: no pivot
    assert t.pivot_at == t.max_steps
    # the embeddings file only, checked as the consumers read it
    assert result.files.kohya is None and result.files.diffusers is None
    assert sorted(p.name for p in result.run_dir.glob("*.safetensors")) == [f"run-{family}_emb.safetensors"]
    assert result.files.embeddings_problems == []
    assert "loads in A1111, ComfyUI and diffusers" in (result.run_dir / "train.log").read_text()
    # the sample's parameters: no LoRA tag (there is no LoRA file), the embedding's name and tokens
    text = Image.open(result.run_dir / "samples" / "final_0.png").text["parameters"]
    assert text.startswith(f"run-{family}_emb on the moon\n"), text
    assert f'Embedding tokens: "run-{family}_emb: <s0>,<s1>"' in text and "<lora:" not in text
    # `loraforge sample` loads it under its trigger into the same model: the rows are the trained vectors
    sd = prepare_model(None, embeddings=[EmbeddingSpec(str(result.files.embeddings))], family=family)
    for tok, te, vec in zip(sd.tokenizers, sd.text_encoders, trained):
        ids = tok.convert_tokens_to_ids([f"run-{family}_emb", f"run-{family}_emb_1"])
        torch.testing.assert_close(te.get_input_embeddings().weight[ids].float(), vec)


def test_textual_inversion_alone_resumes(make_config, tok_images):
    common = {"network.algo": "none", "training.max_train_steps": 4}
    first = Trainer(ti_config(make_config, "sd15", tok_images, **common, **{
        "output.output_name": "a", "training.save_every_n_steps": 2})).run()
    ckpt = first.run_dir / "checkpoints" / "step-000002"
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["a-step00000002_emb.safetensors",
                                                                  "embeddings.safetensors", "network.safetensors"]
    resumed = Trainer(ti_config(make_config, "sd15", tok_images, **common, **{
        "output.output_name": "b", "training.resume": str(ckpt)})).run()
    a, b = load_file(str(first.files.embeddings)), load_file(str(resumed.files.embeddings))
    assert torch.equal(a["emb_params"], b["emb_params"])
    assert resumed.files.kohya is None


def test_phased_pivotal_tuning_with_named_tokens(make_config, tok_images):
    cfg = ti_config(make_config, "sd15", tok_images, **{
        "training.max_train_steps": 5, "training.ti_steps": 3, "network.train_text_encoder": True,
        "training.token_names": ["<krk>", "<s9>"], "optimizer.embedding_lr": 5e-2, "sampling.at_end": True,
    })
    t = Trainer(cfg)
    t.prepare()
    assert t.pivotal.tokens == ["<krk>", "<s9>"] and t.pivot_at == 3  # (train_text_encoder_ti_frac would say 2)
    assert all(t.dataset.caption(i) == "a photo of <krk><s9> robot" for i in range(len(t.dataset)))
    tok = t.model.tokenizers[0]
    assert tok.convert_tokens_to_ids(["<krk>", "<s9>"]) == t.pivotal.token_ids[0]
    assert set(t.network.parts) == {"unet", "te1"}
    snapshots = []
    original = t.compute_loss

    def snapshot():  # the embeddings, and the LoRA of the UNet and of the text encoder
        return [t.pivotal.vectors()[0]] + [torch.cat([p.detach().flatten() for p in t.network.parameters(part)])
                                            for part in ("unet", "te1")]

    def spy(batch, *a, **kw):
        snapshots.append(snapshot())
        return original(batch, *a, **kw)

    t.compute_loss = spy
    t.train()
    result = t.finish()
    states = [*snapshots, snapshot()]  # before steps 1..5, and after step 5
    moved = [[not torch.equal(a, b) for a, b in zip(states[i], states[i + 1])] for i in range(5)]
    # steps 1-3: the embeddings move, the LoRA (UNet and text encoder) does not; steps 4-5: the other way round
    assert moved == [[True, False, False]] * 3 + [[False, True, True]] * 2, moved
    # the names are in the embeddings file and in the samples' parameters
    with safe_open(str(result.files.embeddings), "pt") as f:
        assert f.metadata()["tokens"] == "<krk>,<s9>"
    text = Image.open(result.run_dir / "samples" / "final_0.png").text["parameters"]
    assert text.startswith("run-sd15_emb on the moon <lora:run-sd15:1>\n"), text
    assert 'Embedding tokens: "run-sd15_emb: <krk>,<s9>"' in text


@pytest.mark.parametrize("name", ["robot", "sks"])  # a vocabulary entry; a word that is one token (`sks</w>`)
def test_token_names_the_tokenizer_knows_are_refused(make_config, tok_images, name):
    t = Trainer(ti_config(make_config, "sd15", tok_images, **{"training.token_names": [name, "<s9>"]}))
    with pytest.raises(TrainingError, match=rf"training.token_names: '{name}' \(token \d+\) already mean something"):
        t.prepare()
    t.close()
