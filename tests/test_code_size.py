"""The size limits of issue 13: no module in charlora/ over 450 lines and no
function over 80, so each stage stays a file a newcomer can read whole."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "charlora"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def oversized(root: Path) -> list[str]:
    """Every file over MAX_FILE_LINES and every function (nested too) over MAX_FUNCTION_LINES under root."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(root.parent)
        if len(source.splitlines()) > MAX_FILE_LINES:
            found.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_the_check_finds_a_long_file_and_a_long_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))  # def line + 80 = 81 lines
    (pkg / "long.py").write_text(f"def f():\n{body}\n" + "\n" * (MAX_FILE_LINES - MAX_FUNCTION_LINES))
    (pkg / "short.py").write_text("def g():\n    return 1\n")
    assert oversized(pkg) == ["pkg/long.py: 451 lines", "pkg/long.py:1 f: 81 lines"]


def test_no_charlora_module_or_function_is_over_the_limits():
    assert oversized(PACKAGE) == []
