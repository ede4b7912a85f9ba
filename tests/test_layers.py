"""The package is a one-way house: every import of a selfsup module points to its own floor or one below,
and no modules import each other in a circle (imports inside functions and under TYPE_CHECKING count too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "selfsup"

# Floors from the bottom; a module is on the floor of the longest prefix that names it.
FLOORS: dict[str, int] = {
    # things every floor may use: errors, config values, encoders, images and loaders, files, provenance
    "selfsup": 1, "selfsup.errors": 1, "selfsup.config": 1, "selfsup.models": 1, "selfsup.data": 1,
    "selfsup.checkpoint": 1, "selfsup.distributed": 1, "selfsup.outputs": 1, "selfsup.optim": 1,
    "selfsup.presets": 1, "selfsup.provenance": 1, "selfsup.clustering": 1, "selfsup.seeds": 1,
    "selfsup.engine": 2, "selfsup.epoch": 2,  # the training loop (knows no task); what epoch hooks may use of it
    "selfsup.training_budget": 2, "selfsup.training_checkpoint": 2, "selfsup.training_log": 2,  # the loop's parts
    "selfsup.pretext": 3, "selfsup.pretraining": 3, "selfsup.bench": 3,  # tasks, and runs built from them
    "selfsup.probes": 4, "selfsup.diagnose": 4, "selfsup.visualize": 4,  # evaluation of encoders and tasks
    "selfsup.bench.probe_heads": 4,  # the speed of the probe's heads
    "selfsup.transfer": 5, "selfsup.probes.report": 5,  # transfer, and tables of every kind of record
    "selfsup.cli": 6,  # console scripts: parse, call the library, print
}


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    prefixes = [name for name in FLOORS if module == name or module.startswith(name + ".")]
    assert prefixes, f"{module} is on no floor: add it to FLOORS"
    return FLOORS[max(prefixes, key=len)]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: the selfsup modules it imports}`` for every module under ``package``."""
    modules = {module_name(path, package): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.ImportFrom):  # relative: resolved against the importing package
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:  # a name imported from a module
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and name != "selfsup":
                    graph[name].add(target)
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{name} (floor {floor(name)}) imports {target} (floor {floor(target)})"
            for name, targets in sorted(graph.items()) for target in sorted(targets) if floor(target) > floor(name)]


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """Modules that import each other in a circle, the first found (depth first), or None."""
    done: set[str] = set()

    def circle_from(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        for target in sorted(graph[name]):
            found = circle_from(target, path + [name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        circle = circle_from(name, [])
        if circle:
            return circle
    return None


def test_every_import_points_to_the_same_floor_or_down():
    upward = upward_imports(import_graph())
    assert not upward, "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle():
    circle = find_circle(import_graph())
    assert circle is None, " -> ".join(circle)


def test_the_checks_see_imports_hidden_in_functions_type_checking_blocks_and_relative_form(tmp_path):
    package = tmp_path / "selfsup"
    files = {
        "__init__.py": "",
        "engine.py": "def hook():\n    from selfsup.cli.common import Parser\n",
        "cli/__init__.py": "",
        "cli/common.py": "",
        "data/__init__.py": "",
        "data/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from selfsup.data.b import B\n",
        "data/b.py": "from .a import A\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    graph = import_graph(package)
    assert upward_imports(graph) == ["selfsup.engine (floor 2) imports selfsup.cli.common (floor 6)"]
    assert find_circle(graph) == ["selfsup.data.a", "selfsup.data.b", "selfsup.data.a"]


def test_no_module_outside_the_tasks_names_a_task_class():
    """The engine, loaders, checkpoints, probes and transfer ask a task what PretextTask declares; only pretext/
    (and diagnose/, whose trivial solvers are per task by design) import a task's class."""
    named = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path, PACKAGE)
        if name.startswith(("selfsup.pretext", "selfsup.diagnose")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("selfsup.pretext"):
                named += [f"{name} imports {alias.name}" for alias in node.names
                          if alias.name.endswith("Task") and alias.name != "PretextTask"]
    assert not named, "\n".join(named)


def test_every_task_declares_its_evaluation_input():
    from selfsup.config import from_dict
    from selfsup.pretext import TASKS
    from selfsup.pretext.base import KEPT_CHANNEL, LIGHTNESS, PER_IMAGE, RGB, SOBEL

    kinds = {name: task.input_kind(from_dict(task.Config, {}, prefix="pretext.")) for name, task in TASKS.items()}
    assert set(kinds.values()) <= {RGB, PER_IMAGE, SOBEL, LIGHTNESS, KEPT_CHANNEL}
    assert kinds["colorization"] == LIGHTNESS and kinds["deepcluster"] == SOBEL and kinds["rotation"] == RGB


def test_no_module_is_over_400_lines():
    """Small files that say what they are: a module that grows past 400 lines is split by responsibility."""
    long = {str(path.relative_to(PACKAGE.parent)): count for path in PACKAGE.rglob("*.py")
            if (count := len(path.read_text().splitlines())) > 400}
    assert not long, long
