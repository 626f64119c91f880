"""`pytest -m "not slow"` is the fast set: every test that starts a process of its own
(a subprocess of the CLI, a worker to kill) carries the `slow` mark, itself or through its
module's `pytestmark`."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _marked_slow(decorators: list[ast.expr]) -> bool:
    return any("mark.slow" in ast.unparse(d) for d in decorators)


def test_every_test_that_starts_a_process_is_marked_slow():
    unmarked = []
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue  # this test names the needles it looks for
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(
            isinstance(node, ast.Assign)
            and "pytestmark" in ast.unparse(node.targets[0])
            and "mark.slow" in ast.unparse(node.value)
            for node in tree.body
        ):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                body = ast.unparse(node)
                if ("subprocess." in body or "sys.executable" in body) and not _marked_slow(
                    node.decorator_list
                ):
                    unmarked.append(f"{path.name}::{node.name}")
    assert not unmarked, unmarked
