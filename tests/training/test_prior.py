"""Class images for prior preservation: generated with the base model, one seed per image, resumable."""

import pytest

from loraforge.config import ConfigError
from loraforge.models.loading import load_model
from loraforge.training.prior import class_image_path, ensure_class_images


class _Acc:
    """The two things `ensure_class_images` asks of accelerate, for a single process."""

    is_main_process = True
    device = "cpu"

    def wait_for_everyone(self):
        pass

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()


def _cfg(make_config, folder, n, batch, **kw):
    return make_config("sd15", **{"dataset.with_prior_preservation": True, "dataset.class_data_dir": str(folder),
                                  "dataset.class_prompt": "a photo of a TOK robot", "dataset.num_class_images": n,
                                  "sampling.sample_batch_size": batch, "sampling.num_inference_steps": 2, **kw})


def test_class_images_are_generated_resumably_and_do_not_depend_on_the_batch(make_config, tmp_path):
    model = load_model(_cfg(make_config, tmp_path / "a", 2, 2).model)
    a, b = tmp_path / "a", tmp_path / "b"
    # "interrupted" run: 2 of 4 images, then the run that continues
    first = ensure_class_images(_cfg(make_config, a, 2, 2), model, _Acc(), (96, 64), {"TOK": "<s0><s1>"})
    assert [p.name for p in first] == ["class_00000.png", "class_00001.png"]
    stamps = {p: p.stat().st_mtime_ns for p in first}
    rest = ensure_class_images(_cfg(make_config, a, 4, 2), model, _Acc(), (96, 64), {"TOK": "<s0><s1>"})
    assert [p.name for p in rest] == ["class_00002.png", "class_00003.png"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing regenerated
    assert ensure_class_images(_cfg(make_config, a, 4, 2), model, _Acc(), (96, 64)) == []  # enough: nothing to do
    # the same four images in one go with another batch size (equal up to float rounding of batched convolutions)
    import numpy as np
    from PIL import Image

    ensure_class_images(_cfg(make_config, b, 4, 3), model, _Acc(), (96, 64), {"TOK": "<s0><s1>"})
    for i in range(4):
        x = np.asarray(Image.open(class_image_path(a, i)), dtype=np.int16)
        y = np.asarray(Image.open(class_image_path(b, i)), dtype=np.int16)
        assert np.abs(x - y).max() <= 2
    assert not np.array_equal(np.asarray(Image.open(class_image_path(a, 0))), np.asarray(Image.open(class_image_path(a, 1))))

    assert Image.open(class_image_path(a, 0)).text["parameters"].startswith("a photo of a <s0><s1> robot")
    assert {Image.open(class_image_path(a, i)).size for i in range(4)} == {(96, 64)}  # the run's width × height


def test_class_images_need_a_folder_and_a_prompt(make_config, tmp_path):
    """The config refuses prior preservation without a class folder or prompt, when loaded and when changed later, so
    `ensure_class_images` always has both."""
    with pytest.raises(ConfigError, match="with_prior_preservation needs dataset.class_prompt"):
        make_config("sd15", **{"dataset.with_prior_preservation": True, "dataset.class_data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="with_prior_preservation needs dataset.class_data_dir$"):
        make_config("sd15", **{"dataset.with_prior_preservation": True, "dataset.class_prompt": "a dog"})
    with pytest.raises(ValueError, match="with_prior_preservation needs dataset.class_prompt"):
        _cfg(make_config, tmp_path, 2, 2).dataset.class_prompt = None
    with pytest.raises(ValueError, match="with_prior_preservation needs dataset.class_data_dir"):
        _cfg(make_config, tmp_path, 2, 2).dataset.class_data_dir = ""
