"""Import direction between loopsync's layers, read from the source (AST, no imports run).

The layer table below is the one statement of the rule. A module belongs to the first
layer whose prefixes match its name; everything else is the core. An import is a
dependency wherever it appears (module level or inside a function), except under
`if TYPE_CHECKING:`, which names a type and loads nothing at run time.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Names of layers above the core (module prefixes).
CLI = (
    "loopsync.cli",
    "loopsync.demo",
    "loopsync.__main__",
    "loopsync.healthcheck",
    "loopsync.webhook_setup",
)
WORKER = (
    "loopsync.runner",
    "loopsync.scheduling",
    "loopsync.web",
    "loopsync.metrics",
    "loopsync.inbox",
)
CYCLE = ("loopsync.cycle", "loopsync.stages", "loopsync.effects", "loopsync.ports")
CONNECTORS = ("loopsync.connectors",)
SANDBOX = ("loopsync.sandbox",)
TESTING = ("loopsync.testing",)


@dataclass(frozen=True)
class Layer:
    name: str
    members: tuple[str, ...]  # module prefixes; () = every module no other layer claims
    forbidden: tuple[str, ...]  # module prefixes it must never import
    allowed: tuple[str, ...] = ()  # exact modules allowed despite `forbidden`


LAYERS = (
    Layer(
        "connectors",
        CONNECTORS,
        forbidden=(*SANDBOX, *TESTING, *CYCLE, *WORKER, *CLI, "loopsync.config"),
    ),
    Layer("sandbox", SANDBOX, forbidden=(*WORKER, "loopsync.config", *CYCLE, *CLI, *TESTING)),
    Layer("testing", TESTING, forbidden=CLI),  # anything below the CLI
    # The cycle talks to warehouses through the connector contract only, never a connector.
    Layer(
        "cycle",
        CYCLE,
        forbidden=(*CONNECTORS, *SANDBOX, *TESTING, *CLI, *WORKER),
        allowed=("loopsync.connectors", "loopsync.connectors.base"),
    ),
    # The core may name the connector contract (connectors.base) and the kinds registry
    # (connectors, read by config to find a kind's settings parser), never a connector.
    Layer(
        "core",
        (),
        forbidden=(*CYCLE, *CONNECTORS, *SANDBOX, *TESTING, *CLI, *WORKER),
        allowed=("loopsync.connectors", "loopsync.connectors.base"),
    ),
)
UNCONSTRAINED = CLI + WORKER  # the top: may import anything


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> Layer | None:
    if _within(module, UNCONSTRAINED):
        return None
    for layer in LAYERS:
        if layer.members and _within(module, layer.members):
            return layer
    return LAYERS[-1]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `if TYPE_CHECKING:`."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def imports_of(path: Path, module: str) -> set[str]:
    """Every loopsync module `path` (module `module`) imports at run time (`from a import
    b` counts `a` and, when `a.b` is a module, `a.b`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _type_checking_blocks(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}"))
    return {m for m in found if _within(m, ("loopsync",))}


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = sorted(SRC.joinpath("loopsync").rglob("*.py"))


def violations(path: Path, module: str | None = None) -> list[str]:
    module = module or module_name(path)
    layer = layer_of(module)
    if layer is None:
        return []
    return sorted(
        m
        for m in imports_of(path, module)
        if _within(m, layer.forbidden)
        and m not in layer.allowed
        and not _within(m, layer.members or ("\0",))
    )


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_module_imports_a_layer_above_its_own(path: Path) -> None:
    layer = layer_of(module_name(path))
    assert violations(path) == [], (
        f"{module_name(path)} ({layer.name if layer else '-'}) imports a higher layer"
    )


def test_the_layer_table_classifies_the_modules_it_names() -> None:
    def name(module: str) -> str:
        layer = layer_of(module)
        return layer.name if layer else "top"

    assert name("loopsync.sandbox.loop") == name("loopsync.sandbox.webhooks") == "sandbox"
    assert name("loopsync.testing.latency") == "testing"  # runs the worker as a subprocess
    assert name("loopsync.connectors") == "connectors"
    assert name("loopsync.testing.fakes") == "testing"
    assert name("loopsync.cycle") == name("loopsync.stages.push") == "cycle"
    assert name("loopsync.models") == "core"
    assert name("loopsync.jsonio") == "core"  # orjson's one module: any layer may use it
    assert name("loopsync.configkit") == "core"  # a prefix match stops at a dot
    assert name("loopsync.cli") == name("loopsync.runner") == "top"


def test_the_checker_sees_lazy_imports_and_ignores_typing_only_ones(tmp_path: Path) -> None:
    """A lazy import inside a function is a dependency; one under TYPE_CHECKING is not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from loopsync.runner import run_merchant\n"
        "def later():\n    from loopsync.config import load_config\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(source, encoding="utf-8")
    assert violations(probe, "loopsync.sandbox.probe") == ["loopsync.config"]
