"""Dropouts (neuron, rank, module) act only in training mode: in eval the output is deterministic and equals the
base layer with W + ΔW. Networks save and reload their trainable tensors exactly (checkpoints)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loraforge.errors import NetworkError

from .helpers import build, one_thread, randomize, rel_err

DROPOUTS = {
    "lora": {"network.dropout": 0.5},
    "locon": {"network.dropout": 0.3, "network.rank_dropout": 0.5, "network.module_dropout": 0.3},
    "loha": {"network.dropout": 0.3, "network.rank_dropout": 0.5, "network.rank_dropout_scale": True},
    "lokr": {"network.dropout": 0.3, "network.module_dropout": 0.5},
    "dora": {"network.rank_dropout": 0.5, "network.module_dropout": 0.3},
}


@pytest.fixture(scope="module")
def sd15(tiny_models):
    with one_thread():
        yield tiny_models("sd15")


@pytest.mark.parametrize("algo", list(DROPOUTS))
def test_dropouts_act_only_in_training(sd15, algo):
    model, net = build(sd15, "sd15", **{"network.algo": algo}, **DROPOUTS[algo])
    randomize(net, seed=3)
    key = next(k for k, t in net.targets.items() if t.kind == "linear")
    target = net.targets[key]
    layer = net.roots["unet"].get_submodule(target.path)
    x = torch.randn(4, target.module.in_features, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with torch.no_grad():
        model.unet.eval()
        first, second = layer(x), layer(x)
        assert torch.equal(first, second)
        want = F.linear(x, target.module.weight + net.delta_weight(*key), target.module.bias)
        assert rel_err(first, want) < 1e-5
        model.unet.train()
        outs = [layer(x) for _ in range(6)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:]), "no dropout in training mode"
    assert any(rel_err(o, want) > 1e-3 for o in outs)


@pytest.mark.parametrize("algo", ["lora", "locon", "loha", "lokr", "dora"])
def test_state_dict_round_trip(sd15, algo):
    extra = {"network.use_scalar": True} if algo in ("locon", "loha") else {}
    _, net = build(sd15, "sd15", **{"network.algo": algo, "network.train_text_encoder": True}, **extra)
    randomize(net, seed=4)
    state = net.state_dict()
    assert state and all(k.split(".", 1)[0] in ("unet", "te1") for k in state)
    _, fresh = build(sd15, "sd15", **{"network.algo": algo, "network.train_text_encoder": True}, **extra)
    fresh.load_state_dict(state)
    a, b = net.module_tensors(), fresh.module_tensors()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].alpha == b[key].alpha
        for suffix, tensor in a[key].tensors.items():
            assert torch.equal(tensor, b[key].tensors[suffix]), (key, suffix)
    with pytest.raises(NetworkError, match="lacks the network tensor"):
        fresh.load_state_dict({k: v for k, v in list(state.items())[1:]})
    with pytest.raises(NetworkError, match="does not"):
        fresh.load_state_dict({**state, "unet.nowhere.lora_up.weight": torch.zeros(1)})
