"""`loraforge dataset caption`: a tiny random BLIP built in code (the real classes, a small config, a BERT tokenizer
from a vocabulary written here), saved with save_pretrained and pointed at like a downloaded model."""

import json

import numpy as np
import pytest
from PIL import Image

from loraforge.cli import main

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "dog", "cat", "on", "the", "grass",
         "blue", "toy", "robot"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = tmp_path_factory.mktemp("blip")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizer(str(vocab))
    text = dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=37, encoder_hidden_size=32, max_position_embeddings=64,
                bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id,
                eos_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=37)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    model_dir = folder / "model"
    model.save_pretrained(model_dir)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
                  ).save_pretrained(model_dir)
    return model_dir


def _images(folder, n=3):
    folder.mkdir()
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def _words_ok(caption: str, trigger: str) -> bool:
    head, _, rest = caption.partition(", ")
    return head == trigger and rest and all(w in WORDS for w in rest.split())


def test_sidecars_with_the_trigger_and_existing_captions_kept(tmp_path, tiny_blip, capsys):
    d = _images(tmp_path / "imgs")
    (d / "img1.txt").write_text("my own caption\n")
    assert main(["dataset", "caption", str(d), "--model", str(tiny_blip), "--trigger", "sks toy",
                 "--max-new-tokens", "6"]) == 0
    assert (d / "img1.txt").read_text() == "my own caption\n"
    for name in ("img0", "img2"):
        assert _words_ok((d / f"{name}.txt").read_text().strip(), "sks toy")
    assert "captioned 2 image(s)" in capsys.readouterr().out
    # --overwrite replaces the user's caption too
    assert main(["dataset", "caption", str(d), "--model", str(tiny_blip), "--trigger", "zz", "--overwrite",
                 "--max-new-tokens", "4"]) == 0
    assert _words_ok((d / "img1.txt").read_text().strip(), "zz")


def test_metadata_jsonl_rows_added_and_other_rows_kept(tmp_path, tiny_blip):
    d = _images(tmp_path / "imgs")
    (d / "metadata.jsonl").write_text(json.dumps({"file_name": "img0.png", "text": "kept", "extra": 1}) + "\n")
    assert main(["dataset", "caption", str(d), "--model", str(tiny_blip), "--format", "jsonl", "--trigger", "tok",
                 "--max-new-tokens", "4"]) == 0
    rows = [json.loads(line) for line in (d / "metadata.jsonl").read_text().splitlines()]
    assert rows[0] == {"file_name": "img0.png", "text": "kept", "extra": 1}
    assert sorted(r["file_name"] for r in rows[1:]) == ["img1.png", "img2.png"]
    assert all(_words_ok(r["text"], "tok") for r in rows[1:])
    assert not list(d.glob("*.txt"))


def test_not_a_model_folder_is_a_clear_error(tmp_path, capsys):
    d = _images(tmp_path / "imgs", 1)
    onnx = tmp_path / "wd14"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"x")
    assert main(["dataset", "caption", str(d), "--model", str(onnx)]) == 2
    assert "WD14-style ONNX taggers are not supported" in capsys.readouterr().err
    assert not (d / "img0.txt").exists()
