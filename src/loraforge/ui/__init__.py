"""`loraforge ui`: the local web UI (FastAPI), a front end over the same config and trainer as the CLI.

`app` (routes), `jobs` (the run queue), `form` (the form from the config schema), `progress` (a run folder read for
the page), `static/` (the page: plain HTML, JavaScript and CSS). See docs/ui.md."""
