"""The shape of the code: imports point one way, the directions stay apart, only the web knows Flask.

Read from the source with ``ast`` (function-level imports included), so a new arrow shows up here
before it shows up as an import cycle or a Flask import in the CLI.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.storage import open_store

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"

#: Each part of the bridge and its layer: a part may import only from parts of a lower layer.
LAYERS: dict[str, int] = {
    "bridge": 0, "errors": 0, "logs": 0, "signals": 0,
    "storage": 1,
    "payloads": 2, "delivery": 2, "metrics": 2,
    "inbound": 3, "outbound": 3,
    "config": 4,
    "credentials": 5,
    "wiring": 6,
    "ops": 7, "backfill": 4,
    "web": 8,
    "app": 9,
    "server": 10,
    "cli": 11, "__main__": 12,
}
#: Where Flask may be imported.
FLASK_PARTS = {"web", "app"}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__"), path


def part(module: str) -> str:
    """``bridge.inbound.track`` -> ``inbound``; ``bridge`` -> ``bridge``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "bridge"


def imports(path: Path, module: str) -> set[str]:
    """Every module this file imports (absolute names), at any depth of the file."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


GRAPH = {module: imports(path, module) for module, path in modules()}


def test_every_part_has_a_layer() -> None:
    assert {part(m) for m in GRAPH} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    """A part imports only from lower layers; inbound and outbound never import each other."""
    source = part(module)
    wrong = sorted(
        target for target in GRAPH[module]
        if target in GRAPH and part(target) != source and LAYERS[part(target)] >= LAYERS[source]
    )
    assert not wrong, f"{module} imports upward or sideways: {wrong}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_only_the_web_layer_and_the_factory_know_flask(module: str) -> None:
    if part(module) in FLASK_PARTS:
        return
    assert not {t for t in GRAPH[module] if t == "flask" or t.startswith("flask.")}


def test_no_import_cycle_between_modules() -> None:
    edges = {m: {t for t in targets if t in GRAPH and t != m} for m, targets in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in edges:
        if module not in state:
            visit(module, [])


def test_the_top_of_the_package_stays_small() -> None:
    assert len(list(PACKAGE.glob("*.py"))) <= 12


def package_graph() -> dict[str, set[str]]:
    """Part -> the parts it imports (for the closing note and the README's code map)."""
    graph: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        graph.setdefault(part(module), set()).update(
            part(t) for t in targets if t in GRAPH and part(t) != part(module))
    return graph


READ_ONLY_PROBE = """
import json, sys, threading
from bridge.cli import main
try:
    main(["dead-letters", "list"])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "flask": "flask" in sys.modules, "threads": threading.active_count()}))
"""


@pytest.mark.slow  # starts a Python process
def test_a_read_only_command_builds_no_app_and_starts_no_loop(tmp_path: Path) -> None:
    """``dead-letters list`` goes through ``wiring.build``: no Flask imported, no thread started."""
    env = {"PATH": os.environ.get("PATH", ""), "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}",
           "BRIDGE_WEBHOOK_USERNAME": "u", "BRIDGE_WEBHOOK_PASSWORD": "p-123456",
           "BRIDGE_ADMIN_PASSWORD": "admin-123456"}
    store = open_store(env["BRIDGE_DATABASE_URL"])  # a reading command needs a database to read
    store.migrate()
    store.close()
    done = subprocess.run([sys.executable, "-c", READ_ONLY_PROBE], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe == {"code": 0, "flask": False, "threads": 1}, done.stderr
