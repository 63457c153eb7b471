"""The bad-input corpus (issue 11): every case ends in the expected exit code with a message naming the file, the
field and the fix, no traceback (one only with --debug), nothing that was there before lost, nothing half-written
left behind. The cases are in `cases_*.py`, their inputs written by `build.py`; `python -m tests.corpus.report`
prints the counts. A case the product does not pass yet is an xfail (strict) with its reason."""

from __future__ import annotations

import pytest

from .build import Inputs
from .cases import CASES
from .runner import run_case


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_dirs) -> Inputs:
    """The shared inputs (tiny models, one trained run) for every case of this module."""
    return Inputs(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                               if c.xfail else []) for c in CASES])
def test_case(case, inputs):
    result = run_case(case, inputs.root, inputs)
    assert result.outcome == "clear", result.explain()
