"""Issue 13's data-side speed fixes: each image is decoded once per process (not every step), the pixel conversion
makes one float array, and the start-up check does not decode images at full size — each with the same pixels and
the same refusals as before."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import loraforge.data.dataset as dataset_module
from loraforge.data.cache import SAMPLED_ROWS, module_identity
from loraforge.data.dataset import ImageCaptionDataset
from loraforge.data.images import check_image, to_tensor
from loraforge.data.sources import ImageItem


def noisy_image(path, w, h, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_each_image_is_decoded_once_and_gives_the_pixels_of_a_fresh_decode(tmp_path, monkeypatch):
    items = [ImageItem(noisy_image(tmp_path / f"{i}.png", 90 + 10 * i, 70, i), f"c{i}", "x") for i in range(3)]
    kwargs = dict(center_crop=False, random_flip=True, repeats=4, seed=5)
    ds = ImageCaptionDataset(items, 64, **kwargs)
    first = [ds[(e, i)] for e in range(2) for i in range(len(ds))]  # two epochs
    assert ds.decode_count == 3 and len(ds.decoded) == 3
    monkeypatch.setattr(dataset_module, "DECODED_CACHE_BYTES", 0)  # nothing kept: every use decodes the file
    fresh = ImageCaptionDataset(items, 64, **kwargs)
    again = [fresh[(e, i)] for e in range(2) for i in range(len(fresh))]
    assert fresh.decode_count == len(again) and not fresh.decoded
    for a, b in zip(first, again):  # random crops and flips as before: same pixels, crops and sizes
        assert torch.equal(a.pixel_values, b.pixel_values)
        assert (a.crop_top_left, a.original_size) == (b.crop_top_left, b.original_size)
    assert len({tuple(e.crop_top_left) for e in first}) > 1, "the random crop never moved"


def test_to_tensor_is_the_usual_scaling_in_one_contiguous_float_array():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    expected = torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    out = to_tensor(img)
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, expected)


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_the_check_refuses_truncated_files_without_a_full_size_decode(tmp_path, monkeypatch, ext):
    good = tmp_path / f"good.{ext}"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90°: displayed 192 × 256
    Image.open(noisy_image(tmp_path / "src.png", 256, 192)).save(good, exif=exif.tobytes())
    data = good.read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # one byte of the compressed pixels changed
    (tmp_path / f"flipped.{ext}").write_bytes(bytes(flipped))
    decoded_sizes = []
    load = ImageFile.ImageFile.load

    def spy(self):
        decoded_sizes.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    assert check_image(good, 64) is None
    assert all(w * h <= 256 * 192 // 64 for w, h in decoded_sizes), decoded_sizes  # at most 1/8 × 1/8
    problem = check_image(tmp_path / f"cut.{ext}", 64)
    assert problem is not None and "unreadable" in problem.reason and "truncated" in problem.reason
    assert "too small: 192×256" in check_image(good, 200).reason
    if ext == "png":  # the chunk checksums are read (a JPEG has none: a changed byte may decode)
        assert "unreadable" in check_image(tmp_path / "flipped.png", 64).reason


def test_the_model_fingerprint_reads_a_few_rows_and_still_sees_changed_or_added_embeddings(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(1000, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    base = module_identity(model)
    read = []
    to_float = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda self, *a, **k: read.append(self.numel()) or to_float(self))
    assert module_identity(model) == base
    monkeypatch.undo()
    assert sum(read) <= (SAMPLED_ROWS + 1) * 8 + 8 * 8 + 4 * 8  # a few rows of the table, not all 8000 values
    first = model[0].weight[0].detach().clone()
    with torch.no_grad():
        model[0].weight[0] += 1  # the first row: a sampled one
    assert module_identity(model) != base
    with torch.no_grad():
        model[0].weight[0] = first
    assert module_identity(model) == base
    grown = torch.nn.Embedding(1001, 8)  # a new token appended (pivotal tuning, resize_token_embeddings)
    with torch.no_grad():
        grown.weight[:1000] = model[0].weight
    assert module_identity(torch.nn.Sequential(grown, model[1], model[2])) != base
