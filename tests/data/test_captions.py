"""Caption processing in kohya's order, each operation deterministic per (seed, epoch, index)."""

import numpy as np
import pytest
from PIL import Image

from loraforge.config import load_config
from loraforge.data.build import build_train_data
from loraforge.data.captions import CaptionOptions, process_caption


def run(caption, n=40, epoch=0, replacements=None, **opts):
    o = CaptionOptions(**opts)
    return [process_caption(caption, o, np.random.default_rng([0, epoch, i]), epoch, replacements) for i in range(n)]


def test_prefix_and_suffix_come_first_so_dropout_removes_them_and_shuffle_moves_them():
    assert run("a, b", 1, prefix="pre,", suffix=", suf") == ["pre, a, b , suf"]
    assert set(run("a, b", 5, prefix="pre", dropout_rate=1.0)) == {""}
    shuffled = run("b, c, d", 40, prefix="sks,", shuffle=True)
    assert any(not s.startswith("sks") for s in shuffled), "the prefix is a tag like the others"
    kept = run("b, c, d", 40, prefix="sks,", shuffle=True, keep_tokens=1)
    assert all(s.startswith("sks, ") for s in kept) and len(set(kept)) > 1


def test_caption_dropout_rate_and_every_n_epochs():
    out = run("a photo", 200, dropout_rate=0.3)
    empty = out.count("")
    assert 30 < empty < 90 and set(out) == {"", "a photo"}
    assert run("a photo", 200, dropout_rate=0.3) == out  # same (seed, epoch, index): same draw
    # every 2nd epoch counted from 1: epochs 2 and 4 (0-based 1 and 3) are empty
    for epoch, dropped in [(0, False), (1, True), (2, False), (3, True)]:
        assert set(run("a photo", 5, epoch=epoch, dropout_every_n_epochs=2)) == ({""} if dropped else {"a photo"})


def test_tag_dropout_drops_flexible_tags_only():
    out = run("keep, t1, t2, t3, t4, t5", 100, tag_dropout_rate=0.5, keep_tokens=1)
    assert all(s.startswith("keep") for s in out)
    lengths = [len(s.split(", ")) for s in out]
    assert min(lengths) < 6 and max(lengths) >= 4, "tags were not dropped"
    for s in out:  # order of the survivors is kept (no shuffle)
        tags = s.split(", ")[1:]
        assert tags == sorted(tags)


def test_wildcards_and_multiline_captions():
    out = run("a {red|blue|green} car, {{literal}}", 60, enable_wildcard=True)
    assert {s.split()[1] for s in out} == {"red", "blue", "green"}
    assert all(s.endswith("car, {literal}") for s in out)
    assert set(run("first line\nsecond line", 60, enable_wildcard=True)) == {"first line", "second line"}
    # without wildcards: braces stay, only the first line is used
    assert run("a {red|blue} car\nsecond", 3) == ["a {red|blue} car"] * 3


def test_keep_tokens_separator_with_fixed_suffix():
    out = run("a, b ||| c, d, e ||| f, g", 60, shuffle=True, keep_tokens_separator="|||")
    for s in out:
        tags = s.split(", ")
        assert tags[:2] == ["a", "b"] and tags[-2:] == ["f", "g"] and sorted(tags[2:5]) == ["c", "d", "e"]
        assert "|||" not in s
    assert len(set(out)) > 1
    # no shuffle or dropout: the marker is still removed (sd-scripts would pass `|||` to the text encoder)
    assert run("a ||| b, c", 1, keep_tokens_separator="|||") == ["a, b, c"]


def test_shuffle_with_custom_separator_and_secondary_separator():
    out = run("a; b; c; d", 60, shuffle=True, separator=";")
    assert {tuple(sorted(s.split("; "))) for s in out} == {("a", "b", "c", "d")} and len(set(out)) > 3
    out = run("x;;;y, b, c", 60, shuffle=True, secondary_separator=";;;")
    assert all("x,y" in s for s in out), "a tag with the secondary separator must stay whole"
    assert len({s.index("x,y") for s in out}) > 1
    assert run("x;;;y, b", 1, secondary_separator=";;;") == ["x,y, b"]


def test_replacements_are_the_last_step():
    out = run("TOK, a, b", 40, shuffle=True, replacements={"TOK": "<s0>, <s1>"})
    assert all("<s0>, <s1>" in s for s in out), "replaced after shuffling: the new text is never split"
    assert all("TOK" not in s for s in out)


def _write(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (64, 64), (30, 60, 90)).save(folder / f"{n}.png")
        (folder / f"{n}.txt").write_text(f"{n}, t1, t2, t3, t4")


def test_dataset_options_reach_the_dataset_and_are_deterministic(tmp_path):
    _write(tmp_path / "img", ["a", "b"])
    cfg = load_config(None, [f"dataset.instance_dir={str(tmp_path / 'img')!r}", "dataset.shuffle_caption=true",
                             "dataset.keep_tokens=1", "dataset.caption_prefix='pre'",
                             "dataset.caption_tag_dropout_rate=0.2", "training.seed=5"])
    ds = build_train_data(cfg, 64).dataset
    first = [ds.caption(i, 0) for i in range(len(ds))]
    assert all(c.startswith("pre a") or c.startswith("pre b") for c in first)
    assert first == [ds.caption(i, 0) for i in range(len(ds))]
    epochs = [[ds.caption(i, e) for i in range(len(ds))] for e in range(1, 6)]
    assert any(e != first for e in epochs), "captions never changed between epochs"
    ds.set_epoch(3)
    assert [ds[i].caption for i in range(len(ds))] == epochs[2]
    assert [ds[(3, i)].caption for i in range(len(ds))] == epochs[2]


@pytest.mark.parametrize("option", ["shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                                    "enable_wildcard", "caption_dropout_every_n_epochs"])
def test_each_varying_option_is_reported(option):
    value = {"shuffle_caption": True, "enable_wildcard": True, "caption_dropout_every_n_epochs": 2}.get(option, 0.5)
    opts = CaptionOptions.from_config(load_config(None, [f"dataset.{option}={str(value).lower()}"]).dataset)
    assert opts.varying() == [option]


def test_text_replacements_reach_every_caption(tmp_path):
    _write(tmp_path / "img", ["a"])
    (tmp_path / "img" / "a.txt").write_text("TOK, dog")
    cfg = load_config(None, [f"dataset.instance_dir={str(tmp_path / 'img')!r}", "dataset.shuffle_caption=true"])
    ds = build_train_data(cfg, 64, text_replacements={"TOK": "<s0><s1>"}).dataset
    assert {ds.caption(0, e) for e in range(6)} == {"<s0><s1>, dog", "dog, <s0><s1>"}


def test_worker_processes_see_each_epoch(tmp_path):
    """Persistent workers hold a copy of the dataset made in epoch 0; the sampler passes the epoch with each index."""
    _write(tmp_path / "img", ["a", "b"])
    cfg = load_config(None, [f"dataset.instance_dir={str(tmp_path / 'img')!r}", "dataset.shuffle_caption=true",
                             "training.dataloader_num_workers=1"])
    data = build_train_data(cfg, 64)
    for epoch in range(3):
        data.sampler.set_epoch(epoch)
        got = [c for batch in data.dataloader for c in batch["captions"]]
        assert got == [data.dataset.caption(i, epoch) for b in data.sampler.batches(epoch) for i in b]
