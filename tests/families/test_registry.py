"""The family registry: the facts other packages read from it, checked against independent sources (sd-scripts'
metadata values, diffusers' pipeline signatures, the config folders), and its entries' internal consistency (what a
new family entry must keep)."""

from __future__ import annotations

import inspect

import pytest

from loraforge.families import DIFFUSERS_PREFIXES, FAMILIES, family
from loraforge.formats.metadata import family_metadata


def test_base_model_metadata_is_what_sd_scripts_writes():
    # sd-scripts (library/train_util.py): ss_v2 is True for SD 2.x only; ss_base_model_version / modelspec values
    assert family_metadata("sd15") == {"ss_base_model_version": "sd_v1", "ss_v2": "False",
                                       "modelspec.architecture": "stable-diffusion-v1/lora"}
    assert family_metadata("sd2") == {"ss_base_model_version": "sd_v2", "ss_v2": "True",
                                      "modelspec.architecture": "stable-diffusion-v2-768-v/lora"}
    assert family_metadata("sdxl") == {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False",
                                       "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pipelines_take_the_familys_components(name):
    fam = family(name)
    txt2img, img2img = fam.pipeline_class(), fam.pipeline_class(img2img=True)
    params = set(inspect.signature(txt2img.__init__).parameters)
    assert img2img.__name__.endswith("Img2ImgPipeline")
    assert params <= set(inspect.signature(img2img.__init__).parameters)  # built from the txt2img components
    for te in fam.text_encoders:  # the pipeline is built with these keyword names (SDModel.pipeline)
        assert {te.diffusers, te.tokenizer} <= params
    assert set(fam.pipeline_kwargs) <= params
    # the config folder says the same pipeline
    assert fam.full_size_config("model_index")["_class_name"] == txt2img.__name__


@pytest.mark.parametrize("name", list(FAMILIES))
def test_an_entry_is_consistent(name):
    fam = family(name)
    assert fam.parts == ("unet",) + tuple(f"te{i + 1}" for i in range(len(fam.text_encoders)))
    for te in fam.text_encoders:
        assert te.diffusers in fam.components
        # the config folder holds a CLIP tokenizer for each CLIP encoder; T5's (FLUX) is not shipped
        assert (te.tokenizer in fam.tokenizer_pads) == (te.single_file_layout != "t5")
        assert DIFFUSERS_PREFIXES[te.part] == te.diffusers
    prefixes = [p for te in fam.text_encoders for p in te.kohya_prefixes]
    assert len(prefixes) == len(set(prefixes)), "a kohya prefix answers for two text encoders"
    index = fam.full_size_config("model_index")
    assert {te.diffusers for te in fam.text_encoders} == {k for k in index if k.startswith("text_encoder")}


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown family"):
        family("sd3")
    assert family(FAMILIES["sd2"]) is FAMILIES["sd2"]
