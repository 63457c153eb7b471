"""Every case of the corpus, from the tables of each area."""

from __future__ import annotations

from .cases_data import data_cases
from .cases_tools import tool_cases
from .cases_train import train_cases
from .runner import CLASSES

CASES = train_cases() + data_cases() + tool_cases()

_ids = [c.id for c in CASES]
assert len(_ids) == len(set(_ids)), sorted({i for i in _ids if _ids.count(i) > 1})
assert all(c.cls in CLASSES for c in CASES), [c.id for c in CASES if c.cls not in CLASSES]
