"""`loraforge ui`: the local web UI (the work is done by `loraforge.ui`; FastAPI and uvicorn are the `ui` extra)."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoraforgeError


def add_ui(sub) -> None:
    p = sub.add_parser(
        "ui",
        help="the local web UI: a form from the config schema, a run queue, live progress, samples, downloads",
        description=(
            "Serve the web UI on http://HOST:PORT. Runs are `loraforge train` processes of their own, queued one at "
            "a time; their records live in --state-dir, so a page reload or a restart of the UI finds them. The UI "
            "reads and writes only under --state-dir and the --data-root folders (a path outside is refused)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--state-dir", default="loraforge-ui", help="folder of the job records and run folders "
                                                               "(default ./loraforge-ui)")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="a folder the UI may read images and models from (repeatable)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise LoraforgeError("loraforge ui needs FastAPI and uvicorn: pip install 'loraforge[ui]'") from None
    from ..ui.app import create_app

    for root in args.data_root:
        if not Path(root).expanduser().is_dir():
            raise LoraforgeError(f"--data-root {root}: no such folder")
    local = args.host in ("127.0.0.1", "localhost")  # answer only to this machine's names (no DNS rebinding)
    app = create_app(Path(args.state_dir), [Path(r) for r in args.data_root],
                     allowed_hosts=["127.0.0.1", "localhost"] if local else None)
    print(f"loraforge ui: http://{args.host}:{args.port}  (state: {Path(args.state_dir).resolve()}; Ctrl-C stops the "
          "UI, not the runs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
