"""The text-encoder LoRA stops training after N steps or a fraction of the run; the UNet LoRA goes on."""

import pytest
import torch

from loraforge.config import ConfigError, load_config
from loraforge.training.te_schedule import TextEncoderSchedule, te_stop_step
from loraforge.training.trainer import Trainer


def test_stop_step():
    assert te_stop_step(load_config(None, []).training, 100) is None
    steps = load_config(None, ["network.train_text_encoder=true", "training.stop_text_encoder_training=30"])
    assert te_stop_step(steps.training, 100) == 30
    frac = load_config(None, ["network.train_text_encoder=true", "training.train_text_encoder_frac=0.25"])
    assert te_stop_step(frac.training, 100) == 25


def test_alternating_phases():
    sched = TextEncoderSchedule([], [], stop_at=None, alternate_every=2)
    assert [sched.idle(s) for s in range(6)] == ["unet", "unet", "te", "te", "unet", "unet"]
    stops = TextEncoderSchedule([], [], stop_at=3, alternate_every=2)
    assert [stops.idle(s) for s in range(6)] == ["unet", "unet", "te", "te", "te", "te"]


@pytest.mark.parametrize("overrides, message", [
    (["training.stop_text_encoder_training=5"], "network.train_text_encoder is off"),
    (["training.alternate_text_encoder_unet_every=5"], "network.train_text_encoder is off"),
    (["network.train_text_encoder=true", "training.stop_text_encoder_training=5",
      "training.train_text_encoder_frac=0.5"], "keep one"),
])
def test_bad_combinations_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


class Recording(Trainer):
    """The network's weights per part at the start and after every step."""

    def weights(self):
        return {part: [p.detach().clone() for p in self.network.parameters(part)] for part in self.network.parts}

    def prepare(self):
        super().prepare()
        self.start, self.seen = self.weights(), []

    def _after_step(self, loss, bar):
        self.seen.append(self.weights())
        super()._after_step(loss, bar)


@pytest.mark.parametrize("option, value", [("stop_text_encoder_training", 1), ("train_text_encoder_frac", 0.34)])
def test_text_encoder_lora_stops_and_the_unet_goes_on(make_config, option, value):
    t = Recording(make_config("sd15", **{"network.train_text_encoder": True, f"training.{option}": value,
                                         "training.max_train_steps": 3, "optimizer.learning_rate": 1e-2}))
    t.run()
    first, last = t.seen[0], t.seen[-1]
    te = [part for part in first if part.startswith("te")]
    assert te and "unet" in first
    for part in te:  # frozen after step 1 (3 steps × 0.34 = 1)
        assert all(torch.equal(a, b) for a, b in zip(first[part], last[part])), part
    assert any(not torch.equal(a, b) for a, b in zip(first["unet"], last["unet"]))
    # gradient clipping and the NaN check leave the frozen text-encoder LoRA out
    assert not {id(p) for p in t.te_schedule.te_params} & {id(p) for p in t.trainable_parameters()}
    assert len(t.trainable_parameters()) == len(t.network_params) - len(t.te_schedule.te_params)
    # and before the stop it trained
    assert any(not torch.equal(a, b) for a, b in zip(t.start[te[0]], first[te[0]]))


def test_alternating_text_encoder_and_unet_phases(make_config):
    t = Recording(make_config("sd15", **{"network.train_text_encoder": True,
                                         "training.alternate_text_encoder_unet_every": 1,
                                         "training.max_train_steps": 3, "optimizer.learning_rate": 1e-2}))
    t.run()
    before = [t.start] + t.seen[:-1]

    def moved(part, step):  # did `part` change in step `step` (1-based)?
        a, b = before[step - 1], t.seen[step - 1]
        return any(not torch.equal(x, y) for x, y in zip(a[part], b[part]))

    te = [part for part in t.start if part.startswith("te")]
    assert [(any(moved(p, s) for p in te), moved("unet", s)) for s in (1, 2, 3)] == [
        (True, False), (False, True), (True, False)]  # text encoder, UNet, text encoder
