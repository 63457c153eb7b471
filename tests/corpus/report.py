"""Run the whole corpus and print its counts: `python -m tests.corpus.report [--json OUT.json] [-k SUBSTRING] [-v]`.

The counts are the ones the issue asks for: cases, clear messages, tracebacks, silent wrong, lost outputs (and the
cases left behind a partial file, and the vague ones). Exit code 1 when a case that is not a known failure (xfail)
is not clear, or a known failure passes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def run_corpus(root: Path, select: str | None = None, verbose: bool = False) -> dict:
    from .build import Inputs
    from .cases import CASES
    from .runner import CLASSES, OUTCOMES, run_case

    inputs = Inputs(root)
    rows, t0, cpu0 = [], time.perf_counter(), time.process_time()
    for case in CASES:
        if select and select not in case.id:
            continue
        r = run_case(case, root, inputs)
        rows.append({"id": case.id, "class": case.cls, "outcome": r.outcome, "exit_code": r.rc,
                     "expected_exit_code": case.rc, "missing": r.missing, "changed": r.changed, "left": r.new,
                     "xfail": case.xfail, "seconds": round(r.seconds, 3)})
        if verbose and r.outcome != "clear":
            print(r.explain(), file=sys.stderr)
        elif verbose:
            print(f"{case.id}: clear ({r.seconds:.2f} s)", file=sys.stderr)
    counts = Counter(row["outcome"] for row in rows)
    by_class = {cls: dict(Counter(row["outcome"] for row in rows if row["class"] == cls)) for cls in CLASSES}
    unexpected = [row["id"] for row in rows if (row["outcome"] == "clear") == bool(row["xfail"])]
    return {"cases": len(rows), **{o: counts.get(o, 0) for o in OUTCOMES},
            "known_failures": [{"id": row["id"], "outcome": row["outcome"], "reason": row["xfail"]}
                               for row in rows if row["xfail"]],
            "unexpected": unexpected, "by_class": {k: v for k, v in by_class.items() if v},
            "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - cpu0, 1),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.corpus.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="OUT", help="also write the counts and every case's outcome as JSON")
    p.add_argument("-k", dest="select", help="only the cases whose id contains this")
    p.add_argument("-v", "--verbose", action="store_true", help="print every case that is not clear, in full")
    args = p.parse_args(argv)
    os.environ.setdefault("LORAFORGE_HOME", tempfile.mkdtemp(prefix="loraforge-corpus-home-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="loraforge-corpus-") as tmp:
        report = run_corpus(Path(tmp), args.select, args.verbose)
    print(f"{report['cases']} cases: {report['clear']} clear messages, {report['traceback']} tracebacks, "
          f"{report['silent']} silent wrong, {report['lost']} lost outputs, {report['leftover']} left a partial "
          f"file, {report['vague']} vague ({report['seconds']} s, {report['cpu_seconds']} s of CPU)")
    for cls, outcomes in report["by_class"].items():
        print(f"  {cls}: " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())))
    for known in report["known_failures"]:
        print(f"  known failure {known['id']} ({known['outcome']}): {known['reason']}")
    for case_id in report["unexpected"]:
        print(f"  UNEXPECTED: {case_id}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 1 if report["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
