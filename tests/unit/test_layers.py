"""The layers stay apart: the engine knows nothing of Celery, and nothing imports in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pulse_celery

PACKAGE = Path(pulse_celery.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (``if TYPE_CHECKING:`` too), resolved."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
                if node.module is None:
                    found.update(f"{prefix}.{alias.name}" for alias in node.names)
                found.add(target)
            else:
                found.add(node.module or "")
    return found


def test_the_engine_imports_nothing_of_celery_nor_of_the_layers_above_it():
    offenders = {}
    for path in sorted((PACKAGE / "pulse").glob("*.py")):
        allowed = ("pulse_celery.pulse", "pulse_celery.errors", "pulse_celery._compat")
        bad = {
            name
            for name in imports_of(path)
            if name.split(".")[0] in ("celery", "billiard")
            or (name.startswith("pulse_celery.") and not name.startswith(allowed))
        }
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_the_engine_reaches_celery_internals_only_through_compat_and_compat_imports_celery_lazily():
    source = (PACKAGE / "_compat.py").read_text()
    top_level = [
        node
        for node in ast.parse(source).body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any((getattr(node, "module", None) or alias.name).startswith("celery") for alias in node.names)
    ]
    assert top_level == []


def test_no_module_imports_a_module_that_imports_it_back():
    # A package's __init__ re-exports its modules: importing a sibling through the package
    # is not a cycle of behaviour, so packages are left out of the graph.
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    ours = {
        name: {i for i in deps if i in graph and i != name and i not in packages}
        for name, deps in graph.items()
        if name not in packages
    }

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            for nxt in ours.get(current, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted((a, b) for a, deps in ours.items() for b in deps if reaches(b, a))
    assert cycles == []


def test_importing_bindings_and_decorating_a_task_loads_no_worker_module():
    script = """
import sys
from celery import Celery
import pulse_celery.bindings
from pulse_celery import pulse_binding

app = Celery("layers", broker="memory://", set_as_current=False)

@pulse_binding("exchange/taskcluster-queue/v1/task-completed", "primary.#", queue="builds")
@app.task
def on_completed(payload):
    return payload

app.finalize()
assert app.tasks["layers.on_completed"].pulse_bindings
print(sorted(m for m in sys.modules if m.startswith(("pulse_celery.worker", "pulse_celery.cli"))))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
