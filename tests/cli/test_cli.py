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
