"""The packages' one direction of dependency: core <- operator, core <- cell.

Read from the source (every import, lazy ones inside functions too), so a violation
fails here before it fails in an image.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "lipizzaner_core": ROOT / "core" / "lipizzaner_core",
    "lipizzaner_operator": ROOT / "operator" / "lipizzaner_operator",
    "lipizzaner_cell": ROOT / "cell_image" / "lipizzaner_cell",
}
ALLOWED = {
    "lipizzaner_core": {"lipizzaner_core"},
    "lipizzaner_operator": {"lipizzaner_core", "lipizzaner_operator"},
    "lipizzaner_cell": {"lipizzaner_core", "lipizzaner_cell"},
}
TORCH_FREE = {"lipizzaner_core", "lipizzaner_operator"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_it_may(package):
    for path in PACKAGES[package].rglob("*.py"):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top.startswith("lipizzaner_"):
                assert top in ALLOWED[package], f"{path.relative_to(ROOT)} imports {module}"
            if package in TORCH_FREE:
                assert top not in ("torch", "numpy"), f"{path.relative_to(ROOT)} imports {top}"


UNPICKLERS = ("pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal")


def calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


@pytest.mark.parametrize("package", PACKAGES)
def test_nothing_is_ever_unpickled(package):
    """No pickle-family module, no torch.load; numpy loads refuse pickled objects.

    (bench/exchange.py alone re-creates the original's torch.save format, for timing, on
    bytes it made itself.)"""
    for path in PACKAGES[package].rglob("*.py"):
        where = path.relative_to(ROOT)
        for module in imported_modules(path):
            assert module.split(".")[0] not in UNPICKLERS, f"{where} imports {module}"
        for call in calls(path):
            name = dotted(call.func)
            assert not name.endswith("torch.load"), f"{where} calls {name}"
            if name in ("np.load", "numpy.load"):
                allow = {k.arg: k.value for k in call.keywords}.get("allow_pickle")
                assert isinstance(allow, ast.Constant) and allow.value is False, (
                    f"{where}:{call.lineno} np.load without allow_pickle=False"
                )


# The cell package's rooms, lowest first: a module may import from its own room and the
# rooms before it, never from one after it (docs/architecture.md).
CELL_ROOMS = (
    "data",
    "scores",
    "algorithm",
    "exchange",
    "ensembles",
    "runtime",
    "executors",
    "commands",
)


def cell_imports() -> dict[str, set[str]]:
    """Each cell module (dotted, under lipizzaner_cell) and the cell modules it imports."""
    root = PACKAGES["lipizzaner_cell"]
    graph = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        graph[name] = {
            m.removeprefix("lipizzaner_cell.")
            for m in imported_modules(path)
            if m.startswith("lipizzaner_cell.")
        }
    return graph


def room_of(module: str) -> str:
    return module.split(".")[0]


def test_every_cell_module_lives_in_a_room():
    outside = {m for m in cell_imports() if room_of(m) not in CELL_ROOMS}
    assert outside == {"", "__main__"}  # the package's docstring, and `python -m`


def test_the_cell_rooms_point_only_down():
    rank = {room: i for i, room in enumerate(CELL_ROOMS)}
    for module, imports in cell_imports().items():
        if room_of(module) not in rank:
            continue
        for imported in imports:
            assert rank[room_of(imported)] <= rank[room_of(module)], (
                f"lipizzaner_cell.{module} (room {room_of(module)}) imports "
                f"lipizzaner_cell.{imported}, a room above it"
            )


def test_the_cell_modules_import_no_cycle():
    graph = cell_imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path, module))
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


@pytest.mark.parametrize("module", ["reconcile", "observed"])
def test_the_operators_decider_finds_names_without_the_renderer(module):
    """Names live in names.py; the pure decider and observer never import render.py."""
    path = PACKAGES["lipizzaner_operator"] / f"{module}.py"
    assert "lipizzaner_operator.render" not in imported_modules(path)


def test_the_kubernetes_executor_loads_without_torch():
    """`lipizzaner submit` and the documented Python snippet start without torch."""
    code = (
        "import sys, lipizzaner_cell.executors.kubernetes, lipizzaner_cell.commands.cli; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def architecture_page_modules() -> dict[str, set[str]]:
    """The modules docs/architecture.md's tables name, by the package section they are in."""
    named: dict[str, set[str]] = {}
    section = None
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        if line.startswith("## `"):
            section = line.split("`")[1].rstrip("/")
        elif section and line.startswith("| `"):
            first_column = line.split("|")[1]
            named.setdefault(section, set()).update(first_column.split("`")[1::2])
    return named


def test_the_architecture_page_names_every_module_and_only_real_ones():
    named = architecture_page_modules()
    assert set(named) == {str(p.relative_to(ROOT)) for p in PACKAGES.values()}
    for section, modules in named.items():
        package = ROOT / section
        real = {
            str(path.relative_to(package))
            for path in package.rglob("*.py")
            if path.name not in ("__init__.py", "__main__.py")
        }
        assert modules - real == set(), f"{section}: named but not there"
        assert real - modules == set(), f"{section}: there but not named"
