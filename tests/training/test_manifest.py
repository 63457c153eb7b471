"""Every checkpoint carries a manifest (size and SHA-256 of each file, written last); a resume verifies it: a damaged
checkpoint is refused naming the file and offering the previous one, `resume = "latest"` skips it, and a checkpoint
without manifest (an older loraforge) is accepted with a warning."""

import json
import shutil

import pytest

from loraforge.errors import RunFolderError
from loraforge.training.state import verify_checkpoint
from loraforge.training.trainer import Trainer


def test_a_damaged_checkpoint_is_refused_and_latest_takes_the_previous_one(make_config, caplog, tmp_path):
    cfg = {"training.max_train_steps": 3, "training.save_every_n_steps": 1}
    run = Trainer(make_config("sd15", **cfg)).run().run_dir
    step2, step3 = run / "checkpoints" / "step-000002", run / "checkpoints" / "step-000003"
    files = json.loads((step3 / "manifest.json").read_text())["files"]
    on_disk = sorted(p.name for p in step3.iterdir() if p.name != "manifest.json")
    assert sorted(files) == on_disk and "random_states_0.pkl" in files and "train_state.json" in files
    assert all(files[n]["size"] == (step3 / n).stat().st_size and len(files[n]["sha256"]) == 64 for n in files)
    assert verify_checkpoint(step3) == []

    # one flipped byte in the RNG state: same size, another content
    pkl = step3 / "random_states_0.pkl"
    data = bytearray(pkl.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pkl.write_bytes(bytes(data))
    (step2 / "manifest.json").unlink()  # as written by an older loraforge
    with pytest.raises(RunFolderError) as e:
        Trainer(make_config("sd15", **cfg, **{"training.resume": str(step3)})).run()
    msg = str(e.value)
    assert f"{pkl}: its content changed since it was written (SHA-256 differs)" in msg, msg
    assert f'training.resume = "{step2}"' in msg, msg

    caplog.set_level("WARNING", logger="loraforge")
    longer = {"training.max_train_steps": 4, "training.save_every_n_steps": 1, "training.resume": "latest"}
    done = Trainer(make_config("sd15", **longer)).run()
    assert done.steps == 4 and len(done.losses) == 2  # from step 2, not 3
    assert f"skipping {step3}, which is damaged ({pkl}: its content changed" in caplog.text
    assert f"{step2} has no manifest.json (an older loraforge wrote it): its files cannot be verified" in caplog.text
    assert verify_checkpoint(step3) == []  # rewritten by the resumed run

    # a missing file and a truncated one are named too
    copy = tmp_path / "copy"
    shutil.copytree(step3, copy)
    (copy / "optimizer.bin").unlink()
    net = copy / "network.safetensors"
    net.write_bytes(net.read_bytes()[:100])
    assert verify_checkpoint(copy) == [f"{net}: 100 bytes instead of {(step3 / net.name).stat().st_size}",
                                       f"{copy / 'optimizer.bin'}: missing"]
