"""The code's shape: no import circle, the engine serves the CLI (nothing in it only the workbench
uses), and no function or class too long to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "prune_engine"
CODE = [*ENGINE.glob("*.py"), *(ROOT / "workbench").glob("*.py"), ROOT / "app.py", *(ROOT / "pages").glob("*.py")]
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 60, 300


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    return ".".join(relative.parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every project module `path` imports, at the top or inside a function (a lazy import closes a
    circle just as well)."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in CODE}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_circle():
    edges = graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for child in sorted(edges[node]):
            assert state.get(child) != "open", f"import circle: {' -> '.join([*path, node, child])}"
            if child not in state:
                visit(child, [*path, node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_every_engine_module_serves_the_command_line():
    """The CLI reaches every engine module: none exists only for the workbench."""
    edges = graph()
    reached, todo = set(), ["prune_engine.__main__"]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo.extend(edges[node])
    engine = {name for name in edges if name.startswith("prune_engine.")} - {"prune_engine"}
    assert engine - reached == set()


def test_functions_and_classes_stay_short():
    too_long = []
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            limit = (MAX_FUNCTION_LINES if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                     else MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else None)
            if limit and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert too_long == []
