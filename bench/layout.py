"""The shape of the code, for reviews: modules and lines per package, the size of the agent's loop class,
the biggest classes, import cycles between l3lb's modules, and the test files per folder. Reads the
sources with ``ast`` (nothing is imported), so it runs on any checkout::

    python3 bench/layout.py [--root PATH] [--json]

An import counts wherever it is written (module level, under TYPE_CHECKING, or inside a function): a
cycle is a design knot even when Python tolerates it at run time.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    imports: set[str] = field(default_factory=set)
    classes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Class name -> (lines, methods)."""


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` names (before the imported names)."""
    if not node.level:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def read(root: Path, package: str = "l3lb") -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(root, path)
        text = path.read_text()
        tree = ast.parse(text)
        mod = Module(name, path, len(text.splitlines()))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mod.imports.update(a.name for a in node.names if a.name.split(".")[0] == package)
            elif isinstance(node, ast.ImportFrom):
                target = resolve(name, is_package, node)
                if target.split(".")[0] != package:
                    continue
                for alias in node.names:  # "from . import x" imports module x when there is one
                    mod.imports.add(f"{target}.{alias.name}")
                mod.imports.add(target)
            elif isinstance(node, ast.ClassDef):
                methods = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef) for b in node.body)
                end = node.end_lineno or node.lineno
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                mod.classes[node.name] = (end - first + 1, methods)
        modules[name] = mod
    for mod in modules.values():  # keep only edges to modules that exist (names imported from them drop)
        mod.imports = {i for i in mod.imports if i in modules and i != mod.name}
    return modules


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; packages' own
    ``__init__`` re-exports excluded, since importing a submodule always runs its package first."""
    graph = {n: {i for i in m.imports if not n.startswith(i + ".")} for n, m in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def tests(root: Path) -> dict[str, tuple[int, int]]:
    """Per folder under tests/: (test files, other Python files)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path in sorted((root / "tests").rglob("*.py")):
        folder = str(path.parent.relative_to(root))
        out[folder][0 if path.name.startswith("test_") else 1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def summary(root: Path) -> dict:
    modules = read(root)
    packages: dict[str, list[Module]] = defaultdict(list)
    for m in modules.values():
        pkg = m.name if m.path.name == "__init__.py" else m.name.rpartition(".")[0]
        packages[pkg].append(m)
    agent = next(
        ((m.name, *m.classes["Agent"]) for m in modules.values() if "Agent" in m.classes), (None, 0, 0)
    )
    classes = [(n, k, f"{m.name}.{c}") for m in modules.values() for c, (n, k) in m.classes.items()]
    biggest = sorted(classes, reverse=True)[:8]
    return {
        "packages": {
            pkg: {
                "modules": sum(1 for m in mods if m.path.name != "__init__.py"),
                "lines": sum(m.lines for m in mods),
                "largest": max(((m.lines, m.name) for m in mods), default=(0, ""))[1],
            }
            for pkg, mods in sorted(packages.items())
        },
        "modules": len([m for m in modules.values() if m.path.name != "__init__.py"]),
        "lines": sum(m.lines for m in modules.values()),
        "agent": {"module": agent[0], "lines": agent[1], "methods": agent[2]},
        "largest_classes": [{"class": c, "lines": n, "methods": k} for n, k, c in biggest],
        "cycles": cycles(modules),
        "tests": {k: {"test_files": v[0], "other_files": v[1]} for k, v in tests(root).items()},
    }


def render(s: dict) -> str:
    lines = [f"l3lb: {s['modules']} modules, {s['lines']} lines", ""]
    lines.append("package            modules  lines  largest")
    for pkg, p in s["packages"].items():
        lines.append(f"{pkg:<18} {p['modules']:>7} {p['lines']:>6}  {p['largest']}")
    a = s["agent"]
    lines += ["", f"Agent ({a['module']}): {a['lines']} lines, {a['methods']} methods", "largest classes:"]
    for c in s["largest_classes"]:
        lines.append(f"  {c['class']:<40} {c['lines']:>4} lines {c['methods']:>3} methods")
    lines += ["", f"import cycles: {len(s['cycles'])}"]
    lines += [f"  {' <-> '.join(c)}" for c in s["cycles"]]
    lines += ["", "tests              test files  helpers"]
    lines += [f"{k:<18} {v['test_files']:>10} {v['other_files']:>8}" for k, v in s["tests"].items()]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO, help="a checkout (default: this one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    s = summary(args.root)
    print(json.dumps(s, indent=2) if args.json else render(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
