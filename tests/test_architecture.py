"""The packages' one direction of dependency: core <- operator, core <- cell.

Read from the source (every import, lazy ones inside functions too), so a violation
fails here before it fails in an image.
"""

from __future__ import annotations

import ast
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
