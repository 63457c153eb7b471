"""The web UI in a real browser: Playwright (sync API) drives Debian's Chromium, headless, against `loraforge ui`
started as a process. One walk through the main screens: load a TOML and see the form filled, a bad value refused
with the CLI's message, a run on the tiny model (step counter, a sample image, stop, resume, finish), the LoRA
downloaded, a caption edited. With LORAFORGE_SCREENSHOTS=docs/images it saves the screens as ui-*.png there."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web UI needs the `ui` extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="the web UI needs the `ui` extra (fastapi, uvicorn)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install playwright)")

from loraforge.config import ConfigError, load_config  # noqa: E402

CHROMIUM = os.environ.get("LORAFORGE_CHROMIUM", "/usr/bin/chromium")
DEMO = Path(__file__).parents[2] / "src" / "loraforge" / "assets" / "demo"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LORAFORGE_CHROMIUM)",
                allow_module_level=True)

RUN_TOML = """\
[dataset]
resolution = 64
[network]
rank = 4
[optimizer]
learning_rate = 1e-3
[training]
max_train_steps = 40
[sampling]
sample_every_n_steps = 5
num_inference_steps = 1
num_images_per_prompt = 1
at_end = false
[output]
output_name = "ui-test"
output_dir = "somewhere"
log_with = "none"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, tiny_dirs):
    """`loraforge ui` on a free port, with a data root holding a copy of the demo images."""
    data = tmp_path / "data"
    shutil.copytree(DEMO, data / "images")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loraforge", "ui", "--port", str(port),
                             "--state-dir", str(tmp_path / "state"), "--data-root", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/api/jobs", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"loraforge ui did not start: {proc.stdout.read()}")
            time.sleep(0.2)
    yield url, data, tmp_path / "state"
    for job in json.load(urllib.request.urlopen(url + "/api/jobs")):  # never leave a run behind
        if job["status"] in ("running", "queued"):
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/jobs/{job['id']}/stop", method="POST",
                                                          headers={"X-Loraforge": "1"}))
    proc.terminate()
    proc.wait(10)


def _shot(page, name: str, full_page: bool = True) -> None:
    folder = os.environ.get("LORAFORGE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"ui-{name}.png"), full_page=full_page)


def _step(page) -> int:
    return int(page.text_content("#stat-step").split("/")[0])


def test_the_ui_in_a_browser(server, tmp_path):
    url, data, state = server
    toml = tmp_path / "run.toml"
    toml.write_text(RUN_TOML)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")

        # load a TOML: the form is filled (basic and advanced fields); the UI-owned output_dir is left out
        page.set_input_files("#load-toml", str(toml))
        page.wait_for_function("document.querySelector('#f-steps').value === '40'")
        assert page.input_value("#f-name") == "ui-test"
        assert page.input_value("[data-key='network.rank']") == "4"
        assert page.input_value("[data-key='sampling.at_end']") == "false"
        assert "output.output_dir" in page.text_content("#notes")
        assert page.locator("details.section[open]").evaluate_all("els => els.map(e => e.dataset.section)") == [
            "dataset", "network", "optimizer", "sampling", "output"]  # the sections the file sets
        page.click("#advanced > summary")
        page.evaluate("document.querySelectorAll('details.section').forEach(d => d.open = d.dataset.section === 'network');"
                      "window.scrollTo(0, 0)")
        _shot(page, "form", full_page=False)
        page.click("#advanced > summary")

        # a bad value: refused with the CLI's message (the lines `loraforge train --set ...` prints)
        page.fill("#f-steps", "0")
        page.click("#show-config")
        page.wait_for_selector("#errors:not([hidden])")
        with pytest.raises(ConfigError) as cli:
            load_config(None, ["training.max_train_steps=0"])
        assert page.text_content("#errors") == "config error:\n" + "\n".join(f"  {p}" for p in cli.value.problems)
        _shot(page, "error", full_page=False)
        page.fill("#f-steps", "40")
        page.click("#show-config")
        page.wait_for_selector("#config-view:not([hidden])")
        assert "max_train_steps = 40" in page.text_content("#config-toml")
        assert "loraforge train --set" in page.text_content("#config-cli")

        # start: the step counter moves, a sample arrives; stop; resume; it finishes
        page.click("#start")
        page.wait_for_function("parseInt(document.querySelector('#stat-step').textContent) >= 1")
        page.wait_for_selector("#samples img")
        page.click("#stop")
        page.wait_for_function("document.querySelector('#job-status').textContent === 'stopped'")
        stopped_at = _step(page)
        assert 0 < stopped_at < 40
        page.wait_for_function("!document.querySelector('#resume').disabled")
        page.click("#resume")
        page.wait_for_function("document.querySelector('#job-status').textContent === 'done'", timeout=120_000)
        assert _step(page) == 40
        assert "resumed" in page.text_content("#job-message")
        page.wait_for_selector("#files a")
        assert "ComfyUI" in page.text_content("#check")  # the save-time consumer check of the final file
        assert page.locator("#loss-plot polyline").count() == 2 and page.locator("#lr-plot polyline").count() >= 1
        _shot(page, "run")

        # download the LoRA: a safetensors file (8-byte header length, then its JSON header)
        with page.expect_download() as info:
            page.click("#files a[download='ui-test.safetensors']")
        blob = Path(info.value.path()).read_bytes()
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + header_len])
        assert any(k.startswith("lora_unet_") for k in header) and header["__metadata__"]["ss_network_dim"] == "4"

        # images given to the page land in a new folder of the state dir, which becomes the images folder; the
        # caption grid shows them, and an edit is saved as the image's .txt sidecar
        page.set_input_files("#upload", sorted(str(p) for p in (data / "images").glob("robot_0[0-3].*")))
        page.wait_for_selector("#caption-grid textarea")
        uploaded = Path(page.input_value("#f-images"))
        assert uploaded.parent == state / "uploads" and len(list(uploaded.glob("*.png"))) == 4
        assert page.locator("#caption-grid img").count() == 4
        box = page.locator("#caption-grid textarea[data-name='robot_00.png']")
        assert box.input_value() == (data / "images" / "robot_00.txt").read_text().strip()
        box.fill("a photo of sks robot, edited in the UI")
        box.blur()
        page.wait_for_selector("#caption-grid textarea.saved")
        assert (uploaded / "robot_00.txt").read_text() == "a photo of sks robot, edited in the UI\n"
        _shot(page, "captions")
        browser.close()
