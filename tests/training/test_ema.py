"""EMA of the trained weights: the update rule, the warm-up and interval, the separate file, sampling with it, and a
resume that continues it bit-exactly."""

import pytest
import torch
from safetensors.torch import load_file

from loraforge.config import ConfigError, load_config
from loraforge.training.ema import EMA, ema_decay
from loraforge.training.trainer import Trainer

from .resume import assert_same_tensors, straight_and_resumed


def test_ema_update_rule_warmup_and_interval():
    assert ema_decay(0.999, 0, True) == pytest.approx(0.1) and ema_decay(0.999, 0, False) == 0.999
    assert ema_decay(0.5, 100, True) == 0.5  # the warm-up only caps the decay
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], 0.9, warmup=False, every=2)
    with torch.no_grad():
        p.fill_(1.0)
    assert not ema.step(1) and torch.equal(ema.shadow[0], torch.zeros(3))  # not an update step
    assert ema.step(2)
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.1))
    with torch.no_grad():
        p.fill_(2.0)
    ema.step(4)
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.9 * 0.1 + 0.1 * 2.0))
    with ema.applied():
        torch.testing.assert_close(p.detach(), ema.shadow[0])
    assert torch.equal(p.detach(), torch.full((3,), 2.0))  # the trained weights are back
    state = ema.state_dict()
    other = EMA([torch.nn.Parameter(torch.zeros(3))], 0.9, warmup=False, every=2)
    other.load_state_dict(state)
    assert torch.equal(other.shadow[0], ema.shadow[0]) and other.updates == ema.updates == 2


def test_ema_options_without_use_ema_are_refused():
    with pytest.raises(ConfigError, match="training.ema_decay set, but training.use_ema is off"):
        load_config(None, ["training.ema_decay=0.9"])


class RecordingTrainer(Trainer):
    """Keeps the EMA's start and the trained weights after every optimizer step."""

    def prepare(self):
        super().prepare()
        self.start, self.seen = [s.clone() for s in self.ema.shadow], []

    def _after_step(self, loss, bar):
        self.seen.append([p.detach().clone() for p in self.ema.params])
        super()._after_step(loss, bar)


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_ema_follows_the_weights_and_is_written_beside_the_lora(make_config, device):
    cfg = make_config("sd15", **{"training.use_ema": True, "training.ema_decay": 0.6, "training.ema_warmup": False,
                                 "training.ema_device": device, "training.max_train_steps": 3,
                                 "optimizer.learning_rate": 1e-2})
    t = RecordingTrainer(cfg)
    result = t.run()
    expected = t.start
    for weights in t.seen:
        expected = [0.6 * e + 0.4 * w.float() for e, w in zip(expected, weights)]
    assert len(t.seen) == 3 and t.ema.updates == 3
    for s, e in zip(t.ema.shadow, expected):
        torch.testing.assert_close(s, e, rtol=1e-5, atol=1e-7)
    # "gpu" is the weights' own device (the CPU here); "cpu" puts the shadow on the CPU whatever the device
    assert t.ema.device == ("cpu" if device == "cpu" else None)
    assert all(s.device.type == "cpu" for s in t.ema.shadow)
    ema_file = result.run_dir / "run-sd15-ema.safetensors"
    assert result.files.extra["ema"] == ema_file
    main, ema = load_file(str(result.files.kohya)), load_file(str(ema_file))
    assert main.keys() == ema.keys()
    ups = [k for k in main if k.endswith("lora_up.weight")]
    # the up matrices start at zero: the EMA lags behind the trained ones
    assert sum(ema[k].abs().sum() for k in ups) < sum(main[k].abs().sum() for k in ups)


def test_ema_sampling_samples_the_ema_weights(make_config):
    t = Trainer(make_config("sd15", **{"training.use_ema": True, "training.ema_sampling": True,
                                       "training.max_train_steps": 1, "optimizer.learning_rate": 1e-2}))
    t.prepare()
    seen = []
    import loraforge.training.run_outputs as trainer_module  # where the trainer samples

    def spy(*args, **kwargs):
        seen.append([p.detach().clone() for p in t.ema.params])
        return []

    real = trainer_module.sample_during_training
    trainer_module.sample_during_training = spy
    try:
        t.train()
        t.sample("test")
        trained = [p.detach().clone() for p in t.ema.params]
    finally:
        trainer_module.sample_during_training = real
        t.close()
    assert len(seen) == 1
    assert all(torch.equal(a, s.to(a)) for a, s in zip(seen[0], t.ema.shadow))
    assert any(not torch.equal(a, b) for a, b in zip(seen[0], trained))  # the trained weights are back after


def test_resume_continues_the_ema_bit_exactly(make_config):
    common = {"training.use_ema": True, "training.ema_decay": 0.7, "training.max_train_steps": 4,
              "optimizer.learning_rate": 1e-2}
    straight, resumed, ckpt = straight_and_resumed(make_config, "sd15", common, save_at=2)
    assert (ckpt / "ema.safetensors").is_file()
    assert_same_tensors(straight.files.extra["ema"], resumed.files.extra["ema"])
    assert_same_tensors(straight.files.kohya, resumed.files.kohya)
