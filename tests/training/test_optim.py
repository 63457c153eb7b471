"""Optimizers, parameter groups and schedules."""

import importlib
import logging
import sys

import pytest
import torch

from loraforge.adapters import raw_delta
from loraforge.config import ConfigError, load_config
from loraforge.training.optim import OptimizerSetupError, build_optimizer, build_scheduler, current_lrs
from loraforge.training.trainer import Trainer


def _opt_cfg(*overrides):
    return load_config(None, list(overrides)).optimizer


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(64, 64))]


@pytest.mark.parametrize("kind,cls", [("adamw", "torch.optim.AdamW"), ("sgd", "torch.optim.SGD"),
                                      ("prodigy", "prodigyopt.Prodigy"), ("adafactor", "transformers.Adafactor")])
def test_every_optimizer_steps(kind, cls):
    p = _params()
    before = [x.detach().clone() for x in p]
    opt = build_optimizer(_opt_cfg(f"optimizer.type={kind}"), [{"params": p[:1], "lr": 1e-3}, {"params": p[1:], "lr": 1e-3}])
    module, name = cls.rsplit(".", 1)
    assert type(opt) is getattr(importlib.import_module(module), name)
    for x in p:
        x.grad = torch.randn_like(x)
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, p))


def test_adamw8bit_is_bitsandbytes_with_8bit_states():
    bnb = pytest.importorskip("bitsandbytes")
    p = [torch.nn.Parameter(torch.randn(256, 256))]  # ≥ 4096 values: bitsandbytes keeps its states in 8 bits
    cfg = _opt_cfg("optimizer.type=adamw8bit", "optimizer.adam_beta2=0.99", "optimizer.adam_epsilon=1e-6")
    opt = build_optimizer(cfg, [{"params": p, "lr": 1e-3}])
    assert isinstance(opt, bnb.optim.AdamW8bit)
    g = opt.param_groups[0]
    assert (g["lr"], tuple(g["betas"]), g["eps"]) == (1e-3, (0.9, 0.99), 1e-6)
    before = p[0].detach().clone()
    p[0].grad = torch.randn_like(p[0])
    opt.step()
    assert not torch.equal(before, p[0])
    state = opt.state[p[0]]
    assert state["state1"].dtype == state["state2"].dtype == torch.uint8  # both Adam moments quantized


def test_adamw8bit_without_bitsandbytes_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(OptimizerSetupError, match=r"needs bitsandbytes.*use optimizer.type = 'adamw'"):
        build_optimizer(_opt_cfg("optimizer.type=adamw8bit"), [{"params": _params(), "lr": 1e-3}])


def test_prodigy_warns_about_small_learning_rates(caplog):
    with caplog.at_level(logging.WARNING, logger="loraforge"):
        build_optimizer(_opt_cfg("optimizer.type=prodigy", "optimizer.learning_rate=1e-4"), [{"params": _params(), "lr": 1e-4}])
    assert "about 1.0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="loraforge"):
        build_optimizer(_opt_cfg("optimizer.type=prodigy", "optimizer.learning_rate=1.0"), [{"params": _params(), "lr": 1.0}])
    assert "about 1.0" not in caplog.text


def test_prodigy_options_reach_the_optimizer():
    opt = build_optimizer(
        _opt_cfg("optimizer.type=prodigy", "optimizer.learning_rate=1.0", "optimizer.prodigy_d0=1e-4",
                 "optimizer.prodigy_decouple=false", "optimizer.prodigy_beta3=0.5",
                 "optimizer.prodigy_use_bias_correction=false", "optimizer.prodigy_safeguard_warmup=false"),
        [{"params": _params(), "lr": 1.0}],
    )
    g = opt.param_groups[0]
    assert (g["d0"], g["decouple"], g["beta3"], g["use_bias_correction"], g["safeguard_warmup"]) == (1e-4, False, 0.5, False, False)


def _lrs(kind, steps=10, processes=1, **kw):
    cfg = _opt_cfg(f"optimizer.lr_scheduler={kind}", "optimizer.learning_rate=1.0",
                   *[f"optimizer.{k}={v}" for k, v in kw.items()])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(cfg, opt, steps, num_processes=processes)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        for _ in range(processes):  # what accelerate's prepared scheduler does per optimizer step
            sched.step()
    return out


def test_schedules():
    assert _lrs("constant") == [1.0] * 10
    assert _lrs("constant_with_warmup", lr_warmup_steps=4)[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    lin = _lrs("linear")
    assert lin[0] == 1.0 and lin[5] == pytest.approx(0.5)
    cos = _lrs("cosine")
    assert cos[5] == pytest.approx(0.5) and cos[2] > 0.5 > cos[8]
    restarts = _lrs("cosine_with_restarts", lr_num_cycles=2)
    assert restarts[5] == pytest.approx(1.0) and restarts[4] < 0.5  # hard restart halfway
    poly = _lrs("polynomial", lr_power=2.0)
    assert poly[5] == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("kind", ["constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"])
def test_schedules_count_optimizer_steps_whatever_the_number_of_processes(kind):
    one = _lrs(kind, lr_warmup_steps=4, lr_num_cycles=2)
    assert _lrs(kind, processes=2, lr_warmup_steps=4, lr_num_cycles=2) == pytest.approx(one)
    assert _lrs(kind, processes=3, lr_warmup_steps=4, lr_num_cycles=2) == pytest.approx(one)
    assert one[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])  # warm-up, then the schedule from its top


def test_adafactor_relative_step_and_its_schedule():
    cfg = _opt_cfg("optimizer.type=adafactor", "optimizer.adafactor_relative_step=true", "optimizer.lr_scheduler=adafactor")
    p = _params()
    opt = build_optimizer(cfg, [{"params": p}])
    assert [g["lr"] for g in opt.param_groups] == [None]  # no fixed rate: Adafactor computes it
    sched = build_scheduler(cfg, opt, 10)
    for x in p:
        x.grad = torch.randn_like(x)
    opt.step()
    sched.step()
    assert sched.get_last_lr() == [pytest.approx(1e-2)]  # Adafactor's relative step at step 1: min(1e-2, 1/√1)
    with pytest.raises(ConfigError, match="lr_scheduler = 'adafactor'"):
        load_config(None, ["optimizer.type=adafactor", "optimizer.adafactor_relative_step=true"])
    with pytest.raises(ConfigError, match="needs optimizer.type = 'adafactor'"):
        load_config(None, ["optimizer.lr_scheduler=adafactor"])


def test_groups_rates_and_decay_in_a_run(make_config):
    cfg = make_config("sdxl", **{
        "network.train_text_encoder": True, "optimizer.unet_lr": 2e-4, "optimizer.text_encoder_lr": 5e-5,
        "optimizer.adam_weight_decay": 0.1, "optimizer.adam_weight_decay_text_encoder": 0.0,
    })
    t = Trainer(cfg)
    t.prepare()
    t.close()
    groups = {g["name"]: g for g in t.optimizer.optimizer.param_groups}
    assert set(groups) == {"unet", "text_encoder", "text_encoder_2"}
    assert groups["unet"]["lr"] == 2e-4 and groups["text_encoder_2"]["lr"] == 5e-5
    assert groups["unet"]["weight_decay"] == 0.1 and groups["text_encoder"]["weight_decay"] == 0.0
    assert set(current_lrs(t.optimizer, t.lr_scheduler)) == set(groups)


def test_scale_weight_norms_caps_every_module(make_config):
    cfg = make_config("sd15", **{"optimizer.scale_weight_norms": 0.05, "optimizer.learning_rate": 5e-2,
                                  "network.init_lora_weights": "gaussian"})
    t = Trainer(cfg)
    t.run()
    norms = []
    for (part, path), mt in t.network.module_tensors().items():
        up, down = mt.tensors["lora_up.weight"], mt.tensors["lora_down.weight"]
        norms.append((up @ down * mt.alpha / down.shape[0]).norm().item())
    assert max(norms) <= 0.05 * (1 + 1e-4)
    scaled, mean_norm, max_norm = t.network.apply_max_norm(0.01)
    assert scaled > 0 and max_norm > 0.01


def test_scale_weight_norms_in_a_lycoris_run(make_config):
    """Accepted for the LyCORIS algos (it was refused) and applied after each step: LoHa's init is ΔW = 0, so the
    final norms come from training, capped."""
    cfg = make_config("sd15", **{"network.algo": "loha", "optimizer.scale_weight_norms": 0.02,
                                  "optimizer.learning_rate": 5e-2})
    t = Trainer(cfg)
    t.run()
    norms = [(raw_delta(m) * m.scale).norm().item() for m in t.network.module_tensors().values()]
    assert max(norms) == pytest.approx(0.02, rel=1e-3)  # trained past the cap, held at it


def test_optimizer_args_reach_prodigy():
    cfg = load_config(None, ["optimizer.type=prodigy", "optimizer.learning_rate=1.0"]).optimizer
    cfg.optimizer_args = {"d_coef": 2.0, "growth_rate": 1.5}
    opt = build_optimizer(cfg, [{"params": _params(), "lr": 1.0}])
    assert (opt.param_groups[0]["d_coef"], opt.param_groups[0]["growth_rate"]) == (2.0, 1.5)


def test_optimizer_args_unknown_keyword_names_optimizer_key_and_accepted_keys():
    cfg = _opt_cfg("optimizer.type=prodigy", "optimizer.learning_rate=1.0")
    cfg.optimizer_args = {"d_coeff": 2.0}
    with pytest.raises(OptimizerSetupError,
                       match=r"'prodigy'.*'d_coeff'.*Did you mean 'd_coef'\?.*accepts: .*growth_rate"):
        build_optimizer(cfg, [{"params": _params(), "lr": 1.0}])


def test_optimizer_args_refuse_keywords_an_option_sets():
    cfg = _opt_cfg()
    cfg.optimizer_args = {"betas": [0.8, 0.9]}
    with pytest.raises(OptimizerSetupError, match=r"'betas'.*set by optimizer.adam_beta1 and adam_beta2"):
        build_optimizer(cfg, [{"params": _params(), "lr": 1e-3}])


def test_custom_optimizer_class_by_import_path_with_its_args():
    cfg = _opt_cfg("optimizer.type=torch.optim.RAdam", "optimizer.learning_rate=3e-3")
    cfg.optimizer_args = {"betas": [0.5, 0.6], "decoupled_weight_decay": True}
    p = _params()
    opt = build_optimizer(cfg, [{"params": p, "lr": 3e-3, "weight_decay": 0.1}])
    assert type(opt) is torch.optim.RAdam
    g = opt.param_groups[0]
    assert (g["lr"], tuple(g["betas"]), g["decoupled_weight_decay"], g["weight_decay"]) == (3e-3, (0.5, 0.6), True, 0.1)
    before = p[0].detach().clone()
    p[0].grad = torch.randn_like(p[0])
    opt.step()
    assert not torch.equal(before, p[0])


@pytest.mark.parametrize("path,message", [
    ("no_such_pkg.optim.Fast", r"module 'no_such_pkg.optim' cannot be imported.*Install the package"),
    ("torch.optim.AdamWW", r"module 'torch.optim' has no 'AdamWW'; did you mean torch.optim.AdamW"),
    ("torch.nn.Linear", r"'torch.nn.Linear' is not an optimizer class"),
])
def test_custom_optimizer_import_errors_are_named(path, message):
    with pytest.raises(OptimizerSetupError, match=message):
        build_optimizer(_opt_cfg(f"optimizer.type={path}"), [{"params": _params(), "lr": 1e-3}])


def test_custom_optimizer_args_checked_against_its_signature():
    cfg = _opt_cfg("optimizer.type=torch.optim.SGD")
    cfg.optimizer_args = {"nesterov": True, "momentum": 0.9, "dampening_": 0.0}
    with pytest.raises(OptimizerSetupError, match=r"torch.optim.SGD.*takes no keyword 'dampening_'.*'dampening'"):
        build_optimizer(cfg, [{"params": _params(), "lr": 1e-3}])
    cfg.optimizer_args = {"nesterov": True, "momentum": 0.9}
    opt = build_optimizer(cfg, [{"params": _params(), "lr": 1e-3}])
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("value,ok", [("AdamW", "adamw"), ("torch.optim.AdamW", "torch.optim.AdamW"),
                                      ("Lion", None), ("torch.optim.", None)])
def test_optimizer_type_is_a_builtin_or_an_import_path(value, ok):
    if ok:
        assert _opt_cfg(f"optimizer.type={value}").type == ok
    else:
        with pytest.raises(ConfigError, match="optimizer.type"):
            _opt_cfg(f"optimizer.type={value}")


def test_optimizer_args_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[optimizer]\ntype = "prodigy"\nlearning_rate = 1.0\noptimizer_args = { d_coef = 0.5 }\n')
    cfg = load_config(path, []).optimizer
    opt = build_optimizer(cfg, [{"params": _params(), "lr": 1.0}])
    assert opt.param_groups[0]["d_coef"] == 0.5
