"""The web UI's HTTP API (FastAPI's TestClient): the CLI's validation messages, the folder fence, the job queue's
records surviving a new app (a restart of the UI). Runs here are a stand-in process that keeps the trainer's
contract (metrics.jsonl start / end lines, SIGINT = stop, exit 130); tests/ui/test_browser.py trains for real."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time

import pytest

pytest.importorskip("fastapi", reason="the web UI needs the `ui` extra (fastapi, uvicorn)")

from fastapi.testclient import TestClient  # noqa: E402

from loraforge.cli import main as cli_main  # noqa: E402
from loraforge.ui.app import create_app  # noqa: E402
from loraforge.ui.form import form_overrides  # noqa: E402

# Stands in for `python -m loraforge train CONFIG.toml`: writes the start line, waits, on SIGINT writes the end line
# and exits 130, as the trainer does.
FAKE_TRAIN = textwrap.dedent(f"""\
    #!{sys.executable}
    import json, sys, time, tomllib
    from pathlib import Path
    cfg = tomllib.loads(Path(sys.argv[4]).read_text())
    run = Path(cfg["output"]["output_dir"]) / cfg["output"]["output_name"]
    run.mkdir(parents=True, exist_ok=True)
    def write(**r):
        with open(run / "metrics.jsonl", "w") as f:
            f.write(json.dumps({{"time": time.time(), **r}}) + "\\n")
    try:
        write(kind="start", step=0, max_steps=cfg["training"]["max_train_steps"], run_id="x", resumed=False)
        write(kind="step", step=1, max_steps=cfg["training"]["max_train_steps"], loss=0.5, loss_smooth=0.5, lr={{"unet": 1e-3}})
        time.sleep(60)
    except KeyboardInterrupt:
        write(kind="end", step=1, status="stopped", message="interrupted")
        sys.exit(130)
""")


@pytest.fixture
def folders(tmp_path):
    state, data = tmp_path / "state", tmp_path / "data"
    data.mkdir()
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    return state, data, fake


def _app(state, data, fake):
    app = create_app(state, [data], background=False)
    app.state.queue.python = str(fake)
    return TestClient(app, headers={"X-Loraforge": "1"})  # as the page sends


def test_a_bad_value_is_refused_with_the_clis_own_message(folders, capsys):
    client = _app(*folders)
    values = {"training.max_train_steps": "0", "network.rank": "4", "optimizer.lr_scheduler": "cosinus"}
    r = client.post("/api/config", json={"values": values})
    assert r.status_code == 400 and r.json()["error"] == "config error"
    argv = ["train", *[a for o in form_overrides(values) for a in ("--set", o)], "--dry-run"]
    assert cli_main(argv) == 2
    printed = capsys.readouterr().err.splitlines()
    assert printed[0] == "config error:"
    assert r.json()["problems"] == [line.strip() for line in printed[1:]]
    assert any("training.max_train_steps = 0" in p for p in r.json()["problems"])
    # starting the same form is refused with the same lines, and queues nothing
    r2 = client.post("/api/jobs", json={"values": values})
    assert r2.status_code == 400 and r2.json()["problems"] == r.json()["problems"]
    assert client.get("/api/jobs").json() == []


def test_a_path_outside_the_folders_is_refused(folders, tmp_path):
    state, data, fake = folders
    client = _app(state, data, fake)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    r = client.post("/api/jobs", json={"values": {"dataset.instance_dir": str(outside)}})
    assert r.status_code == 400
    message = r.json()["problems"][0]
    assert f"dataset.instance_dir = '{outside}'" in message and str(data) in message and "--data-root" in message
    assert client.get("/api/jobs").json() == []
    # `..` does not get out either, and the caption editor is fenced the same way
    sneaky = str(data / ".." / "elsewhere")
    assert client.post("/api/config", json={"values": {"model.pretrained_model_name_or_path": sneaky}}).status_code == 400
    r = client.post("/api/config", json={"values": {"model.pretrained_model_name_or_path": "org/some-model"}})
    assert r.status_code == 400 and "the UI downloads nothing" in r.json()["problems"][0]
    assert client.get("/api/captions", params={"folder": str(outside)}).status_code == 400
    # inside a data root: accepted, written absolute into the shown config
    (data / "imgs").mkdir()
    r = client.post("/api/config", json={"values": {"dataset.instance_dir": str(data / "imgs")}})
    assert r.status_code == 200 and f'instance_dir = "{data / "imgs"}"' in r.json()["toml"]


def _wait(client, job_id, status, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] == status:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never became {status}: {job}")


def test_jobs_queue_one_at_a_time_and_survive_a_restart_of_the_ui(folders):
    state, data, fake = folders
    client = _app(state, data, fake)
    values = {"training.max_train_steps": "7", "output.output_name": "first"}
    first = client.post("/api/jobs", json={"values": values}).json()
    second = client.post("/api/jobs", json={"values": {**values, "output.output_name": "second"}}).json()
    third = client.post("/api/jobs", json={"values": {**values, "output.output_name": "third"}}).json()
    assert first["status"] == "running" and second["status"] == third["status"] == "queued"
    job = _wait(client, first["id"], "running")
    while job["step"] != 1:  # the stand-in's first step line
        job = client.get(f"/api/jobs/{first['id']}").json()
    assert job["max_steps"] == 7 and job["progress"]["loss_smooth"] == 0.5

    restarted = _app(state, data, fake)  # a new UI process: reads the records, finds the live run by its pid
    jobs = {j["id"]: j for j in restarted.get("/api/jobs").json()}
    assert jobs[first["id"]]["status"] == "running" and jobs[second["id"]]["status"] == "queued"
    pid = restarted.app.state.queue.get(first["id"]).pid
    assert pid and os.path.exists(f"/proc/{pid}")
    assert restarted.post(f"/api/jobs/{first['id']}/stop").json()["status"] == "stopping"
    client.app.state.queue._procs[first["id"]].wait(10)  # (the first app is its parent: reap it)
    stopped = _wait(restarted, first["id"], "stopped")
    assert stopped["message"] == "interrupted" and stopped["history"] == ["started", "stopped at step 1"]
    # the queue moves on, one at a time: the second job runs now, the third waits; cancel the third, stop the second
    _wait(restarted, second["id"], "running")
    assert restarted.get(f"/api/jobs/{third['id']}").json()["status"] == "queued"
    assert restarted.post(f"/api/jobs/{third['id']}/stop").json()["status"] == "cancelled"
    restarted.post(f"/api/jobs/{second['id']}/stop")
    restarted.app.state.queue._procs[second["id"]].wait(10)
    _wait(restarted, second["id"], "stopped")
    assert restarted.get(f"/api/jobs/{third['id']}").json()["status"] == "cancelled"


def test_stop_works_when_the_ui_was_started_ignoring_sigint(folders):
    """A UI started in the background by a script inherits SIGINT ignored (and so would its runs, which then never
    stop); its runs get SIGINT back, even for a stop sent before the run's Python is up."""
    state, data, fake = folders
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        client = _app(state, data, fake)
        job = client.post("/api/jobs", json={"values": {"training.max_train_steps": "7"}}).json()
        client.post(f"/api/jobs/{job['id']}/stop")
        client.app.state.queue._procs[job["id"]].wait(20)
    finally:
        signal.signal(signal.SIGINT, before)
    _wait(client, job["id"], "stopped")


def test_progress_files_and_check_are_read_from_the_run_folder(folders):
    """What the page polls: the last step's numbers and the series from metrics.jsonl (a resumed run's repeated step
    counted once), samples, the result files (not checkpoints), the final file's check line from train.log; files
    are served from inside the run folder only."""
    state, data, fake = folders
    client = _app(state, data, fake)
    job = client.post("/api/jobs", json={"values": {"training.max_train_steps": "7", "output.output_name": "r"}}).json()
    client.post(f"/api/jobs/{job['id']}/stop")
    client.app.state.queue._procs[job["id"]].wait(10)
    _wait(client, job["id"], "stopped")
    run = state / "jobs" / job["id"] / "run" / "r"
    (run / "samples").mkdir(parents=True, exist_ok=True)
    (run / "samples" / "000002_0.png").write_bytes(b"png")
    (run / "r.safetensors").write_bytes(b"lora")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "r-step2.safetensors").write_bytes(b"old")
    lines = [
        {"kind": "start", "step": 0, "max_steps": 7, "resumed": False},
        {"kind": "step", "step": 1, "max_steps": 7, "loss": 0.5, "loss_smooth": 0.5, "lr": {"unet": 1e-3}},
        {"kind": "end", "step": 1, "status": "stopped", "message": ""},
        {"kind": "start", "step": 0, "max_steps": 7, "resumed": True},
        {"kind": "step", "step": 1, "max_steps": 7, "loss": 0.9, "loss_smooth": 0.9, "lr": {"unet": 1e-3}},
        {"kind": "step", "step": 2, "max_steps": 7, "loss": 0.7, "loss_smooth": 0.8, "lr": {"unet": 5e-4},
         "it_s": 2.5, "eta_s": 2.0, "memory_mb": 321.0},
        {"kind": "sample", "step": 2, "tag": "000002", "files": ["samples/000002_0.png"]},
    ]
    with open(run / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"time": time.time(), **r}) + "\n" for r in lines)
    (run / "train.log").write_text(
        "2026-01-01 00:00:00,000 INFO loraforge.training.outputs: check r-step2.safetensors: ComfyUI 1/2 modules\n"
        "2026-01-01 00:00:01,000 INFO loraforge.training.outputs: check r.safetensors: ComfyUI 48/48 modules\n"
        "2026-01-01 00:00:01,000 WARNING loraforge.training.outputs: check r.safetensors: A1111: 1 key skipped\n")
    assert client.get(f"/api/jobs/{job['id']}").json()["progress"]["report"] is False
    (run / "report.html").write_text("<html>report</html>")
    p = client.get(f"/api/jobs/{job['id']}").json()["progress"]
    assert p["report"] is True
    assert client.get(f"/api/jobs/{job['id']}/files/report.html").headers["content-type"].startswith("text/html")
    assert (p["step"], p["max_steps"], p["loss_smooth"], p["lr"], p["it_s"], p["eta_s"], p["memory_mb"]) == (
        2, 7, 0.8, {"unet": 5e-4}, 2.5, 2.0, 321.0)
    assert [s["step"] for s in p["series"]] == [1, 2] and p["series"][0]["loss"] == 0.9  # the resumed line wins
    assert p["samples"] == [{"step": 2, "tag": "000002", "files": ["samples/000002_0.png"]}]
    assert p["files"] == [{"name": "r.safetensors", "bytes": 4}]
    assert p["check"] == ["r.safetensors: ComfyUI 48/48 modules", "r.safetensors: A1111: 1 key skipped"]
    assert client.get(f"/api/jobs/{job['id']}/files/r.safetensors").content == b"lora"
    assert client.get(f"/api/jobs/{job['id']}/files/samples/000002_0.png").content == b"png"
    for climb in ("../../job.json", "%2E%2E/%2E%2E/job.json", "..%2F..%2Fjob.json"):
        assert client.get(f"/api/jobs/{job['id']}/files/{climb}").status_code in (400, 404), climb


def test_captions_are_listed_and_saved_as_sidecars(folders):
    state, data, fake = folders
    client = _app(state, data, fake)
    images = data / "imgs"
    images.mkdir()
    for name in ("a.png", "b.jpg"):
        (images / name).write_bytes(b"img")
    (images / "a.txt").write_text("a cat\n")
    (images / "notes.md").write_text("not an image")
    listed = client.get("/api/captions", params={"folder": str(images)}).json()["images"]
    assert listed == [{"name": "a.png", "caption": "a cat"}, {"name": "b.jpg", "caption": ""}]
    r = client.post("/api/captions", json={"folder": str(images), "name": "b.jpg", "text": " a dog "})
    assert r.status_code == 200 and (images / "b.txt").read_text() == "a dog\n"
    # only an image of the folder gets a sidecar; a name that climbs out is fenced
    assert client.post("/api/captions", json={"folder": str(images), "name": "notes.md", "text": "x"}).status_code == 400
    r = client.post("/api/captions", json={"folder": str(images), "name": "../../../x.png", "text": "x"})
    assert r.status_code == 400 and "outside the folders" in r.json()["problems"][0]
    assert client.get("/api/image", params={"path": str(images / "a.png")}).content == b"img"


def test_the_ui_command_binds_this_machine_by_default_and_checks_its_folders(tmp_path, capsys):
    from loraforge.cli import build_parser

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.data_root) == ("127.0.0.1", 7860, [])
    assert cli_main(["ui", "--data-root", str(tmp_path / "missing")]) == 2
    assert f"--data-root {tmp_path / 'missing'}: no such folder" in capsys.readouterr().err


def test_the_form_is_the_schema_and_a_loaded_toml_round_trips(folders):
    """Every option of every section is a field with its documentation (but the two the UI sets); a TOML loaded
    into the form gives back the same config when the form is submitted."""
    from pathlib import Path

    from loraforge.config import load_config
    from loraforge.config.root import SECTIONS

    client = _app(*folders)
    schema = client.get("/api/schema").json()
    fields = {f["key"]: f for s in schema["sections"] for f in s["fields"]}
    expected = {f"{name}.{key}" for name, model in SECTIONS.items() for key in model.model_fields} - {
        "output.output_dir", "training.resume", "dataset.subsets"}
    assert set(fields) == expected
    assert fields["network.rank"]["description"] == SECTIONS["network"].model_fields["rank"].description
    assert fields["training.mixed_precision"]["choices"] == ["auto", "no", "fp16", "bf16"]
    assert fields["sampling.at_end"]["kind"] == "bool" and fields["sampling.at_end"]["default"] is True
    tricky = folders[0].parent / "tricky.toml"  # values whose text reads back as something else unless quoted
    tricky.write_text('[dataset]\ncaption_prefix = "42"\nresolution = [64, 96]\n[training]\ngradient_checkpointing = true\n'
                      '[sampling]\nvalidation_prompts = ["it\'s \\"quoted\\"", "a, b"]\n[output]\noutput_name = "2024"\n')
    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))
    assert examples
    for example in [tricky, *examples]:
        form = client.post("/api/config/parse", json={"text": example.read_text(), "name": example.name}).json()
        back = load_config(None, form_overrides(form["values"])).model_dump()
        want = load_config(example).model_dump()
        for cfg in (back, want):
            cfg["output"].pop("output_dir")
        assert back == want, example.name


def test_dropped_images_are_copied_into_a_new_folder_of_the_state_dir(folders):
    state, data, fake = folders
    client = _app(state, data, fake)
    files = [("files", ("a.png", b"png-bytes", "image/png")), ("files", ("a.txt", b"a cat", "text/plain"))]
    r = client.post("/api/uploads", files=files, data={"name": "cats"})
    assert r.status_code == 200 and r.json() == {"folder": str(state / "uploads" / "cats"), "saved": ["a.png", "a.txt"]}
    assert (state / "uploads" / "cats" / "a.png").read_bytes() == b"png-bytes"
    # a name that climbs is cut to its last part; other kinds of files are refused
    r = client.post("/api/uploads", files=[("files", ("../../evil.png", b"x", "image/png"))], data={"name": "../x"})
    assert r.json()["saved"] == ["evil.png"] and (state / "uploads" / "x" / "evil.png").is_file()
    r = client.post("/api/uploads", files=[("files", ("run.sh", b"x", "text/plain"))])
    assert r.status_code == 400 and "run.sh: not an image" in r.json()["problems"][0]


def test_cross_site_posts_and_foreign_host_names_are_refused(folders):
    state, data, fake = folders
    plain = TestClient(create_app(state, [data], background=False))  # a form post from another site: no header
    r = plain.post("/api/uploads", files=[("files", ("a.png", b"x", "image/png"))])
    assert r.status_code == 403 and not (state / "uploads").exists()
    assert plain.post("/api/jobs", json={"values": {}}).status_code == 403 and plain.get("/api/jobs").json() == []
    local = TestClient(create_app(state, [data], background=False, allowed_hosts=["127.0.0.1", "localhost"]),
                       base_url="http://127.0.0.1:7860")
    assert local.get("/api/jobs").status_code == 200
    assert local.get("/api/jobs", headers={"Host": "evil.example:7860"}).status_code == 400
