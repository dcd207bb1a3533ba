"""The package's shape: imports point one way (no cycles) and every module stays small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "router"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `path` imports when it runs (imports under TYPE_CHECKING only
    serve annotations and are left out; imports inside functions count)."""
    own = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        # importing a.b.c first runs the packages a and a.b: their __init__ modules are imports too
        # (but not this module's own packages, which are already running when it is imported)
        names += [parent for n in names for parent in _parents(n) if not own.startswith(parent + ".")]
        out.update(n for n in names if n in known)
    return out


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    known = set(files)
    return {name: runtime_imports(path, known) - {name} for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_modules_stay_small() -> None:
    sizes = {module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in ROOT.rglob("*.py")}
    big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_demo_is_not_part_of_the_package() -> None:
    assert not (ROOT / "demo.py").exists()
    assert all("demo" not in deps for deps in graph().values())


def test_compiled_modules_are_not_older_than_their_sources() -> None:
    """The data path runs compiled (make native): an extension older than its source would run old
    code. `make test` rebuilds first; this catches a stale build run by hand."""
    stale = []
    for ext in ROOT.rglob("*.so"):
        for suffix in (".py", ".c"):  # a mypyc module, or a hand-written C extension (setup.C_EXTENSIONS)
            source = ext.with_name(ext.name.split(".", 1)[0] + suffix)
            if source.exists() and source.stat().st_mtime > ext.stat().st_mtime:
                stale.append(str(source.relative_to(ROOT.parent)))
    assert not stale, f"compiled modules older than their sources (run `make native`): {stale}"


def test_setup_lists_only_modules_that_exist() -> None:
    """setup.py's NATIVE list names real modules (a renamed module would silently run interpreted)."""
    text = (ROOT.parent / "setup.py").read_text(encoding="utf-8")
    listed = [line.strip().strip('",') for line in text.splitlines() if line.strip().startswith('"router/')]
    assert listed and all((ROOT.parent / path).exists() for path in listed), listed


def test_every_compiled_module_is_listed_in_setup() -> None:
    """An extension left from a module since taken out of setup.py would shadow its source (Python
    imports the .so first) and run stale code; `make native` deletes them before building."""
    text = (ROOT.parent / "setup.py").read_text(encoding="utf-8")
    listed = {line.strip().strip('",') for line in text.splitlines() if line.strip().startswith('"router/')}
    stray = [str(ext.relative_to(ROOT.parent)) for ext in ROOT.rglob("*.so")
             if ext.name.split(".", 1)[0] != "native__mypyc"
             and not any(str(ext.with_name(ext.name.split(".", 1)[0] + suffix).relative_to(ROOT.parent)) in listed
                         for suffix in (".py", ".c"))]
    assert not stray, f"compiled modules not listed in setup.py (run `make native`): {stray}"
