import subprocess
import sys
import time


def test_help_is_fast_and_imports_no_torch():
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "loraforge", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0 and "train" in proc.stdout and "demo" in proc.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, loraforge.cli; loraforge.cli.build_parser();"
         "print(any(m in sys.modules for m in ('torch', 'diffusers', 'transformers')))"],
        capture_output=True, text=True,
    )
    assert probe.stdout.strip() == "False"
    assert elapsed < 3.0  # about 0.1 s; the bound only catches a heavy import sneaking in


def test_subcommand_help(capsys):
    from loraforge.cli import main

    try:
        main(["train", "--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "--set" in capsys.readouterr().out


def test_console_log_follows_the_current_stderr(monkeypatch):
    """`cli.main` may run many times in one process (tests, the Python API) while callers swap stderr: the console
    handler must write to the stderr of the moment, never to a stream closed since."""
    import io
    import logging

    from loraforge.cli.commands import _setup_logging

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    _setup_logging()
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("loraforge.test").info("after the swap")
    assert second.getvalue() == "after the swap\n"


def test_every_subcommand_has_a_description():
    """`loraforge X --help` says what X does, for every subcommand and sub-subcommand (`merge loras`...)."""
    import argparse

    from loraforge.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield f"{path} {name}".strip(), sub
                    yield from walk(sub, f"{path} {name}")

    found = list(walk(build_parser(), ""))
    assert len(found) >= 16  # 13 commands + merge's 3 kinds
    missing = [name for name, sub in found if not (sub.description or "").strip()]
    assert missing == []
