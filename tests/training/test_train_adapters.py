"""End to end with the adapter family on the tiny models: every save is checked against the consumers on the trained
model's own architecture (one summary line in the log), LoCon's diffusers file reproduces the trained model, the
algos diffusers cannot load get no diffusers file but a log line saying how to use them, the metadata names the
network module and args, and resuming a LyCORIS run (with its random dropouts) is bit-exact."""

import json

import pytest
import torch
from safetensors import safe_open

from loraforge.training.trainer import Trainer

from .resume import assert_same_tensors, straight_and_resumed
from .test_train_e2e import _fresh_pipe, _te_out, _unet_out


def _log(result) -> str:
    return (result.run_dir / "train.log").read_text()


def test_default_run_logs_the_consumer_check(make_config):
    result = Trainer(make_config("sd15", **{"training.max_train_steps": 1})).run()
    assert "check run-sd15.safetensors: ComfyUI 48/48 modules, A1111 48/48, diffusers loads" in _log(result)
    assert not result.files.check.broken


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_locon_files_reproduce_the_trained_model(make_config, tiny_dirs, family):
    cfg = make_config(family, **{"network.algo": "locon", "network.preset": "full", "network.conv_dim": 2,
                                 "network.conv_alpha": 1.0, "network.train_text_encoder": True,
                                 "training.max_train_steps": 2})
    trainer = Trainer(cfg)
    result = trainer.run()
    report = result.files.check
    n = len(report.modules)
    assert report.summary() == f"ComfyUI {n}/{n} modules, A1111 {n}/{n}, diffusers loads"
    assert f"ComfyUI {n}/{n} modules" in _log(result)
    trained = trainer.model
    trained.unet.eval()
    cond_dim = trained.unet.config.cross_attention_dim
    pooled_dim = trained.text_encoders[-1].config.projection_dim if family == "sdxl" else None
    want_unet = _unet_out(trained.unet, family, cond_dim, pooled_dim)
    want_te = _te_out(trained.pipeline(), family)
    base_unet = _unet_out(_fresh_pipe(tiny_dirs, family).unet, family, cond_dim, pooled_dim)
    assert (want_unet - base_unet).abs().max() > 1e-4
    for source in (result.run_dir, result.files.kohya):  # the diffusers file, then the kohya file
        pipe = _fresh_pipe(tiny_dirs, family)
        pipe.load_lora_weights(str(source))
        torch.testing.assert_close(_unet_out(pipe.unet, family, cond_dim, pooled_dim), want_unet, rtol=0, atol=2e-5)
        torch.testing.assert_close(_te_out(pipe, family)[0], want_te[0], rtol=0, atol=2e-5)
    with safe_open(str(result.files.kohya), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora"
    assert json.loads(meta["ss_network_args"]) == {"preset": "full", "conv_dim": "2", "conv_alpha": "1"}


@pytest.mark.parametrize("algo,module_args", [
    ("loha", {"algo": "loha"}),
    ("lokr", {"algo": "lokr", "factor": "-1"}),
    ("dora", {"algo": "lora", "dora_wd": "True", "wd_on_output": "False"}),
])  # fmt: skip
def test_lycoris_algos_write_kohya_files_only(make_config, algo, module_args):
    cfg = make_config("sdxl", **{"network.algo": algo, "network.train_text_encoder": True,
                                 "training.max_train_steps": 1})
    result = Trainer(cfg).run()
    assert result.files.kohya.is_file() and result.files.diffusers is None
    assert not (result.run_dir / "pytorch_lora_weights.safetensors").exists()
    log = _log(result)
    assert "no diffusers file: diffusers" in log and "in AUTOMATIC1111 or ComfyUI" in log
    report = result.files.check
    n = len(report.modules)
    assert (report.consumers["comfyui"].applied, report.consumers["a1111"].applied) == (n, n)
    assert not report.broken and report.warnings == []
    with safe_open(str(result.files.kohya), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == module_args
    suffixes = {k.partition(".")[2] for k in keys}
    assert {"loha": "hada_w1_a", "lokr": "lokr_w1", "dora": "dora_scale"}[algo] in suffixes


def test_output_axis_dora_logs_the_consumer_caveat(make_config):
    cfg = make_config("sd15", **{"network.algo": "dora", "network.dora_axis": "output", "training.max_train_steps": 1,
                                 "sampling.at_end": True})
    result = Trainer(cfg).run()
    assert result.samples  # sampling runs through the LyCORIS modules (weight-rebuild forward) in eval mode
    log = _log(result)
    assert "network.dora_axis = 'output'" in log and "mis-merges" in log
    assert "mis-merged" in log  # the check after the save names the modules
    assert result.files.check.issue("dora-output-axis")


def test_resume_is_bit_exact_for_a_lycoris_algo_with_dropouts(make_config):
    common = {"training.max_train_steps": 4, "network.algo": "loha", "network.use_scalar": True,
              "network.rank_dropout": 0.3, "network.module_dropout": 0.2, "network.dropout": 0.1,
              "optimizer.lr_scheduler": "cosine", "network.loraplus_lr_ratio": 4.0}
    straight, resumed, _ = straight_and_resumed(make_config, "sd15", common, save_at=2)
    assert_same_tensors(straight.files.kohya, resumed.files.kohya)
    assert resumed.losses == straight.losses[2:]
