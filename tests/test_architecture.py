"""The house plan (ARCHITECTURE.md) held against the code: imports point down the flow only."""

from __future__ import annotations

import ast
from pathlib import Path

import tickvault

PACKAGE = Path(tickvault.__file__).parent

# What each room may import (besides itself). Upward arrows are what this test refuses.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "domain": {"errors"},
    "config": {"errors", "domain"},
    "analytics": {"errors", "domain"},
    "ml": {"errors", "domain", "analytics"},
    "store": {"errors", "domain", "config", "analytics"},
    "bus": {"errors", "domain", "config"},
    "sources": {"errors", "domain", "config", "store"},
    "recorder": {"errors", "domain", "config", "bus", "store"},
    "workers": {"errors", "domain", "config", "analytics", "ml", "store", "bus"},
    "app": {
        "errors",
        "domain",
        "config",
        "analytics",
        "ml",
        "store",
        "bus",
        "sources",
        "recorder",
        "workers",
    },
    "__init__": {"errors", "domain", "config", "store", "bus"},
    "__main__": {"app"},
}


def room_of(module: str) -> str:
    """`tickvault.store.api` -> 'store'; `tickvault.errors` -> 'errors'; `tickvault` -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_rooms(path: Path) -> set[tuple[str, int]]:
    """The tickvault rooms a file imports (at any depth: lazy and TYPE_CHECKING imports count)."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "tickvault":
                names = [f"tickvault.{alias.name}" for alias in node.names]
        for name in names:
            if name == "tickvault" or name.startswith("tickvault."):
                found.add((room_of(name), node.lineno))
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_known_room() -> None:
    rooms = {
        room_of("tickvault." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in modules()
    }
    assert rooms <= set(ALLOWED), f"modules outside the plan: {rooms - set(ALLOWED)}"


def test_imports_point_down_the_flow_only() -> None:
    upward = []
    for path in modules():
        relative = path.relative_to(PACKAGE)
        room = relative.with_suffix("").parts[0]
        for target, line in imported_rooms(path):
            if target != room and target not in ALLOWED[room]:
                upward.append(f"{relative}:{line} ({room}) imports {target}")
    assert not upward, "imports that point back up the flow:\n" + "\n".join(sorted(upward))


def test_the_plan_itself_has_no_circle() -> None:
    seen: dict[str, int] = {}

    def depth(room: str, path: tuple[str, ...] = ()) -> int:
        assert room not in path, f"circle: {' -> '.join((*path, room))}"
        if room not in seen:
            seen[room] = 1 + max((depth(r, (*path, room)) for r in ALLOWED[room]), default=0)
        return seen[room]

    for room in ALLOWED:
        depth(room)


def test_every_package_says_what_it_owns_and_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Imports:" in doc, f"{init.relative_to(PACKAGE)} has no docstring naming its imports"


def test_no_private_name_is_reached_across_packages() -> None:
    reached = []
    for path in modules():
        room = path.relative_to(PACKAGE).with_suffix("").parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tickvault."):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and room_of(node.module) != room:
                    reached.append(
                        f"{path.relative_to(PACKAGE)}:{node.lineno} imports {private} from {node.module}"
                    )
    assert not reached, "\n".join(reached)
