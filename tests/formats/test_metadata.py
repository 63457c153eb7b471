"""The training metadata in the LoRA header: the resolution as sd-scripts writes it."""

import pytest

from loraforge.config import load_config
from loraforge.formats.metadata import training_metadata


@pytest.mark.parametrize("resolution, ss, modelspec", [
    ((64, 96), "(64, 96)", "64x96"),  # the run's (width, height)
    ([96, 64], "(96, 64)", "96x64"),  # as read back from a JSON run state
    (512, "(512, 512)", "512x512"),  # a square written as one number
    (None, "", ""),
])
def test_resolution_is_width_height(resolution, ss, modelspec):
    meta = training_metadata(load_config(None, []), {"resolution": resolution}, "sd15", "lora")
    assert meta["ss_resolution"] == ss and meta["modelspec.resolution"] == modelspec
