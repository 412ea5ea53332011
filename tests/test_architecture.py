"""The package's layering: no import cycles, and the engine never imports the floors above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gradflow"

#: The engine: selectors up to records, verdicts and gates. Nothing here may import the floors above it.
ENGINE = {"errors", "_tree", "select", "subject", "norms", "runtime", "ablation", "gradients", "distributed",
          "probing", "measure", "stats", "record", "verdicts", "gate"}
#: Floors above the engine (by package or module).
ABOVE = ("gradflow.report", "gradflow.cli", "gradflow.spec", "gradflow.evaluation", "gradflow.testing",
         "gradflow.pytest_plugin", "gradflow.junit", "gradflow.preflight", "gradflow.integrations",
         "gradflow.learning", "gradflow.monitor")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every gradflow module ``path`` imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gradflow")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("gradflow"):
                continue
            if node.module or not node.level:  # `from . import x` depends on x, not on the package itself
                found.add(target)
            for alias in node.names:  # `from . import preflight` imports a submodule
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                        (PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py").exists():
                    found.add(candidate)
    return found - {name}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules} for name, path in modules.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt == "gradflow":  # the package's lazy __init__ re-exports; importing it is not a dependency
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)


def test_engine_never_imports_upward():
    edges = graph()
    bad = [(name, target) for name, targets in edges.items() if name.removeprefix("gradflow.") in ENGINE
           for target in targets if target.startswith(ABOVE)]
    assert not bad, bad


def test_subjects_know_nothing_of_reports_or_cli():
    edges = graph()
    bad = [(n, t) for n, ts in edges.items() if n.startswith("gradflow.subjects") for t in ts if t.startswith(ABOVE)]
    assert not bad, bad


def test_measure_does_not_import_open_clip_or_report():
    code = ("import sys, gradflow.measure, gradflow.probing, gradflow.record; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('open_clip', 'transformers', 'matplotlib', "
            "'rich', 'pandas') or m.startswith('gradflow.report') or m.startswith('gradflow.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_importing_gradflow_imports_no_framework():
    code = ("import sys, gradflow, gradflow.monitor, gradflow.integrations; gradflow.Monitor; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', "
            "'transformers', 'tensorboard', 'peft', 'diffusers', 'timm', 'wandb')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
