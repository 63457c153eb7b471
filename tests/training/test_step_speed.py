"""Issue 13's per-step overheads: torch optimizers get their fused kernels, the trainable-parameter list is built
once per pivotal phase (not every step), and the progress bar writes to a pipe at its own interval, not per step."""

import torch

from loraforge.config.optimizer import OptimizerConfig
from loraforge.training.optim import build_optimizer, fast_kernels
from loraforge.training.state import TrainState
from loraforge.training.te_schedule import TextEncoderSchedule
from loraforge.training.trainer import Trainer


def groups():
    return [{"params": [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3, 4))], "lr": 1e-3}]


def test_torch_optimizers_get_fused_kernels_unless_optimizer_args_choose():
    opt = build_optimizer(OptimizerConfig(type="adamw"), groups())
    assert opt.defaults["fused"] is True and opt.param_groups[0]["fused"] is True
    sgd = build_optimizer(OptimizerConfig(type="sgd"), groups())
    assert sgd.defaults["fused"] is True
    mine = build_optimizer(OptimizerConfig(type="adamw", optimizer_args={"foreach": True}), groups())
    assert mine.defaults["foreach"] is True and not mine.defaults["fused"]
    assert fast_kernels(type("Other", (torch.optim.Optimizer,), {}), {}) == []  # not torch's: left alone


def test_a_refused_fused_kernel_falls_back_to_foreach_with_clean_groups(monkeypatch):
    class Picky(torch.optim.AdamW):  # as torch does for a device without fused kernels
        def __init__(self, params, foreach=None, fused=None, **kw):
            if fused:
                list(params)[0]["fused"] = True  # what a refused constructor leaves in the groups it was given
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, foreach=foreach, fused=fused, **kw)

    Picky.__module__ = "torch.optim.adamw"
    monkeypatch.setattr("loraforge.training.optim._optimizer_class", lambda cfg: (Picky, {}))
    opt = build_optimizer(OptimizerConfig(type="adamw"), groups())
    assert opt.defaults["foreach"] is True and not opt.param_groups[0]["fused"]


class Phases:
    """Pivotal tuning's phase flags, as the trainer reads them."""

    def __init__(self, embeddings):
        self.network_waits, self.training, self.embeddings = True, True, embeddings

    def step_parameters(self, network_params):
        return ([] if self.network_waits else list(network_params)) + (self.embeddings if self.training else [])


def test_the_trainable_parameters_are_one_list_until_the_pivotal_phase_changes():
    t = Trainer.__new__(Trainer)
    net, emb = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(3))]
    t.network_params, t.pivotal, t.te_schedule = net, None, None
    assert t.trainable_parameters() is t.trainable_parameters() and t.trainable_parameters() == net
    t = Trainer.__new__(Trainer)
    t.network_params, t.pivotal, t.te_schedule = net, Phases(emb), None
    first = t.trainable_parameters()
    assert first == emb and t.trainable_parameters() is first
    t.pivotal.network_waits = False  # the network joins
    assert t.trainable_parameters() == net + emb
    t.pivotal.training = False  # the embeddings freeze
    assert t.trainable_parameters() == net


def test_the_trainable_parameters_follow_the_text_encoder_schedule():
    te, unet = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(3))]
    t = Trainer.__new__(Trainer)
    t.network_params, t.pivotal, t.state = te + unet, None, TrainState()
    t.te_schedule = TextEncoderSchedule(te, unet, stop_at=2)
    first = t.trainable_parameters()
    assert first == te + unet and t.trainable_parameters() is first
    t.state.global_step = 2  # the text-encoder LoRA stops: the list changes with the phase
    assert t.trainable_parameters() == unet


def test_the_progress_bar_writes_to_a_pipe_at_its_interval_not_per_step(make_config, capsys):
    cfg = make_config("sd15", **{"training.max_train_steps": 4, "dataset.resolution": 64})
    Trainer(cfg).run()
    err = capsys.readouterr().err
    bar_lines = [part for part in err.replace("\r", "\n").split("\n") if part.startswith("training:")]
    assert 1 <= len(bar_lines) <= 2, bar_lines  # opened and closed: not one line per step (4)


def test_the_frozen_base_is_loaded_straight_into_bf16_unless_the_vae_must_stay_fp32(make_config, monkeypatch):
    import loraforge.training.trainer as trainer_module

    asked = []
    load = trainer_module.load_model
    monkeypatch.setattr(trainer_module, "load_model", lambda cfg, dtype=None: asked.append(dtype) or load(cfg, dtype))
    for precision, no_half_vae in (("bf16", False), ("bf16", True), ("fp16", False), ("no", False)):
        t = Trainer(make_config("sd15", **{"training.mixed_precision": precision,
                                           "training.no_half_vae": no_half_vae}))
        try:
            t.setup()
            t.load_model()
            if precision == "bf16" and not no_half_vae:
                assert t.model.unet.dtype == torch.bfloat16 and t.model.vae.dtype == torch.bfloat16
        finally:
            t.close()
    assert asked == [torch.bfloat16, None, None, None]
