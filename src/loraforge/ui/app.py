"""The web UI's HTTP side (FastAPI): the page, the form's schema, config checks, the job queue, run progress, files
and captions. Every path it reads or writes is checked against its folders (`Roots`)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import time

from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from pydantic import BaseModel

from ..config import dump_config
from ..errors import ConfigError, LoraforgeError
from ..utils.files import atomic_path, write_text_atomic
from .form import cli_line, form_overrides, form_schema, toml_to_form
from .jobs import CONFIG_FILE, CONSOLE_FILE, Job, JobQueue, Roots, console_tail, resolve_config
from .progress import run_progress

STATIC = Path(__file__).parent / "static"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CSRF_HEADER = "X-Loraforge"  # every POST of the page carries it (see create_app)
UPLOADS = "uploads"  # dropped images go to <state dir>/uploads/<name>/


class FormValues(BaseModel):
    values: dict[str, str]


class TomlText(BaseModel):
    text: str
    name: str = "config.toml"


class Caption(BaseModel):
    folder: str
    name: str
    text: str
    extension: str = ".txt"


def _job_view(queue: JobQueue, job: Job, detail: bool = False) -> dict:
    view = {"id": job.id, "name": job.name, "status": job.status, "created": job.created, "message": job.message,
            "history": job.history, "resumable": job.status in ("stopped", "failed")}
    progress = run_progress(job.run_dir(queue.state_dir))
    view.update(step=progress["step"], max_steps=progress["max_steps"])
    if detail:
        view["progress"] = progress
        view["cli"] = cli_line(job.overrides)
        view["config_file"] = str(job.folder(queue.state_dir) / CONFIG_FILE)
        view["console"] = console_tail(job.folder(queue.state_dir) / CONSOLE_FILE)
    return view


def create_app(state_dir: Path, data_roots: list[Path] = (), *, background: bool = True,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app. `background`: a thread starts queued jobs and records ended ones (every request does it too).
    `allowed_hosts`: the Host headers answered (others get 400: a page of another site that points a name of its own
    at 127.0.0.1 cannot read the API). Every POST must carry the `X-Loraforge` header, which a page of another site
    cannot send without the browser asking first (and this app never says yes): no cross-site form posts."""
    roots = Roots(state_dir, list(data_roots))
    roots.state_dir.mkdir(parents=True, exist_ok=True)
    queue = JobQueue(roots)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        stop = threading.Event()
        thread = threading.Thread(target=queue.run_forever, args=(stop,), daemon=True)
        if background:
            thread.start()
        yield
        stop.set()

    app = FastAPI(title="loraforge", lifespan=lifespan)
    app.state.queue = queue
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def same_page_posts_only(request: Request, call_next):
        if request.method not in ("GET", "HEAD") and request.headers.get(CSRF_HEADER) != "1":
            return JSONResponse(status_code=403, content={
                "error": "refused", "problems": [f"a POST without the {CSRF_HEADER} header (sent by the UI's page)"]})
        return await call_next(request)

    @app.exception_handler(LoraforgeError)
    async def user_error(request: Request, e: LoraforgeError):
        # a ConfigError's problems are the lines the CLI prints under "config error:"
        return JSONResponse(status_code=400, content={
            "error": "config error" if isinstance(e, ConfigError) else str(e), "problems": e.problems or [str(e)]})

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/schema")
    def schema():
        return {**form_schema(), "roots": [str(r) for r in roots.folders]}

    @app.post("/api/config")
    def show_config(form: FormValues):
        """The TOML and CLI line of the form, validated as `loraforge train --set ...` validates them."""
        overrides = form_overrides(form.values)
        cfg = resolve_config(overrides, roots)
        return {"toml": dump_config(cfg), "cli": cli_line(overrides), "overrides": overrides}

    @app.post("/api/config/parse")
    def parse_toml(toml: TomlText):
        return toml_to_form(toml.text, toml.name)

    @app.get("/api/jobs")
    def jobs():
        queue.tick()
        return [_job_view(queue, j) for j in queue.jobs()]

    @app.post("/api/jobs")
    def submit(form: FormValues):
        return _job_view(queue, queue.submit(form_overrides(form.values)))

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        queue.tick()
        return _job_view(queue, queue.get(job_id), detail=True)

    @app.post("/api/jobs/{job_id}/stop")
    def stop(job_id: str):
        return _job_view(queue, queue.stop(job_id))

    @app.post("/api/jobs/{job_id}/resume")
    def resume(job_id: str):
        return _job_view(queue, queue.resume(job_id))

    @app.get("/api/jobs/{job_id}/files/{path:path}")
    def run_file(job_id: str, path: str):
        run_dir = queue.get(job_id).run_dir(queue.state_dir).resolve()
        target = (run_dir / path).resolve()
        if not target.is_relative_to(run_dir) or not target.is_file():
            raise HTTPException(404, f"no file {path!r} in the run folder of job {job_id}")
        if target.suffix == ".html":  # the run's report.html, shown in the browser
            return FileResponse(target, media_type="text/html")
        return FileResponse(target, filename=target.name)

    @app.post("/api/uploads")
    def upload(files: list[UploadFile], name: str = Form("")):
        """Dropped images (and their .txt captions) into a new folder `<state dir>/uploads/<name>/`."""
        name = Path(name).name.strip() or time.strftime("images-%Y%m%d-%H%M%S")
        if name.startswith("."):
            raise LoraforgeError(f"upload folder name {name!r}: give a plain name such as 'my-dog'")
        folder = roots.state_dir / UPLOADS / name
        saved = []
        for f in files:
            file_name = Path(f.filename or "").name
            if file_name.startswith(".") or Path(file_name).suffix.lower() not in (*IMAGE_SUFFIXES, ".txt"):
                raise LoraforgeError(f"{f.filename}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a .txt caption; "
                                     "drop only those")
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / file_name) as tmp:
                tmp.write_bytes(f.file.read())
            saved.append(file_name)
        return {"folder": str(folder), "saved": saved}

    @app.get("/api/captions")
    def captions(folder: str, extension: str = ".txt"):
        root = roots.check(folder, "images folder")
        if not root.is_dir():
            raise LoraforgeError(f"images folder {folder!r}: no such folder")
        items = []
        for p in sorted(root.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                sidecar = p.with_suffix(extension)
                items.append({"name": p.name, "caption": sidecar.read_text(encoding="utf-8").strip()
                              if sidecar.is_file() else ""})
        return {"folder": str(root), "images": items}

    @app.get("/api/image")
    def image(path: str):
        target = roots.check(path, "image")
        if target.suffix.lower() not in IMAGE_SUFFIXES or not target.is_file():
            raise HTTPException(404, f"no image {path!r}")
        return FileResponse(target)

    @app.post("/api/captions")
    def save_caption(caption: Caption):
        image = roots.check(Path(caption.folder) / caption.name, "image")
        if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
            raise LoraforgeError(f"{image}: not an image in the folder")
        if not caption.extension.startswith(".") or "/" in caption.extension:
            raise LoraforgeError(f"caption extension {caption.extension!r}: give one like '.txt'")
        write_text_atomic(image.with_suffix(caption.extension), caption.text.strip() + "\n")
        return {"saved": str(image.with_suffix(caption.extension))}

    return app
