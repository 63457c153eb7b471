"""The package layers drawn in docs/architecture.md hold in the code: imports point down, no module imports itself
back through others, and a function-local import of loraforge code is allowed only where the doc says why."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "loraforge"
DOC = ROOT / "docs" / "architecture.md"


def read_layers(doc: Path) -> tuple[dict[str, int], set[str]]:
    """`layer N: a, b` lines → {package: N}; `lazy imports allowed in: x, y` → {x, y}."""
    text = doc.read_text()
    layers = {name.strip(): int(n) for n, names in re.findall(r"^layer (\d+): (.+)$", text, re.M)
              for name in names.split(",")}
    lazy = re.search(r"^lazy imports allowed in: (.+)$", text, re.M)
    return layers, {n.strip() for n in lazy.group(1).split(",")} if lazy else set()


def module_imports(package: Path) -> dict[str, list[tuple[str, bool]]]:
    """Module name → [(imported loraforge module, imported inside a function without a `# lazy:` reason?)]."""
    files = {}
    for f in package.rglob("*.py"):
        parts = [package.name, *f.relative_to(package).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    found: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for name, (f, is_pkg) in files.items():
        parts = name.split(".")
        source = f.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        # function-local imports, except those marked `# lazy: <why>` (a heavy import kept off the start-up path)
        local = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn) if "# lazy:" not in lines[getattr(n, "lineno", 1) - 1]}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in dict.fromkeys(targets):
                if t.split(".")[0] == package.name and t != name:
                    found[name].append((t, id(node) in local))
    return found


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(imports, layers: dict[str, int]) -> list[str]:
    bad = []
    for src, targets in imports.items():
        for dst, _ in targets:
            a, b = top(src), top(dst)
            if a == b or b == "loraforge":
                continue
            if a not in layers or b not in layers:
                bad.append(f"{src} → {dst}: package {a if a not in layers else b!r} has no layer in docs/architecture.md")
            elif layers[b] >= layers[a]:
                bad.append(f"{src} → {dst}: layer {layers[a]} ({a}) may not import layer {layers[b]} ({b})")
    return sorted(set(bad))


def cycles(imports) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = {m: {t for t, _ in ts} for m, ts in imports.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop(); on.discard(w); comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def hidden_imports(imports, lazy_ok: set[str]) -> list[str]:
    return sorted(f"{src} → {dst}" for src, ts in imports.items() for dst, local in ts
                  if local and top(src) not in lazy_ok)


def test_every_import_points_down_the_layers():
    layers, _ = read_layers(DOC)
    assert layers, "docs/architecture.md lists no `layer N: ...` lines"
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert not packages - set(layers), f"packages with no layer in docs/architecture.md: {packages - set(layers)}"
    assert layer_violations(module_imports(PACKAGE), layers) == []


def test_no_import_cycles():
    assert cycles(module_imports(PACKAGE)) == []


def test_no_function_local_imports_of_our_code_outside_the_cli():
    _, lazy_ok = read_layers(DOC)
    assert hidden_imports(module_imports(PACKAGE), lazy_ok) == []


@pytest.fixture()
def toy(tmp_path):
    """A package with a cycle hidden in a function and an upward import, to show the checks can fail."""
    pkg = tmp_path / "loraforge"
    for sub in ("low", "high"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from ..high.b import g\n\n\n"
                                      "def h():\n    from ..high import b  # lazy: a reason\n")
    (pkg / "high" / "b.py").write_text("from ..low.a import f\n")
    doc = tmp_path / "arch.md"
    doc.write_text("layer 0: low\nlayer 1: high\nlazy imports allowed in: high\n")
    return pkg, doc


def test_the_checks_see_a_cycle_an_upward_import_and_a_hidden_import(toy):
    pkg, doc = toy
    layers, lazy_ok = read_layers(doc)
    imports = module_imports(pkg)
    assert cycles(imports) == [["loraforge.high.b", "loraforge.low.a"]]
    assert layer_violations(imports, layers) == [
        "loraforge.low.a → loraforge.high.b: layer 0 (low) may not import layer 1 (high)"]
    assert hidden_imports(imports, lazy_ok) == ["loraforge.low.a → loraforge.high.b"]
