"""`training.torch_compile` compiles each of the UNet's transformer blocks, not the whole UNet (issue 13). Only the
wiring is checked here (no compiled step runs on the CPU: it needs a C++ toolchain and minutes)."""

from loraforge.training.trainer import Trainer


def _compiled(module) -> bool:
    return module._compiled_call_impl is not None  # set by nn.Module.compile (torch._dynamo's optimized call)


def _prepared(make_config, on: bool):
    t = Trainer(make_config("sd15", **{"training.torch_compile": on}))
    t.setup()
    t.load_model()
    t.load_data()
    t.setup_network()
    t.close()
    return t.model.unet


def test_torch_compile_wraps_each_transformer_block_and_nothing_else(make_config):
    unet = _prepared(make_config, True)
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(_compiled(b) for b in blocks)
    others = [m for m in unet.modules() if type(m).__name__ != "BasicTransformerBlock" and _compiled(m)]
    assert others == []  # regional: neither the UNet nor its down/up blocks
    assert not any(_compiled(m) for m in _prepared(make_config, False).modules())
