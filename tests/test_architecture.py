"""The house's rules, read from the source: every import statement of adm's modules (at module level and
inside functions) is an arrow, and the arrows point one way."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "adm"
# The layers that know nothing of the compatibility layer, the command line or training.
LOW = ("adm.nn", "adm.diffusion", "adm.sampling", "adm.data", "adm.eval", "adm.runtime", "adm.errors")
HIGH = ("adm.compat", "adm.cli", "adm.train")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(where: Path = PACKAGE) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(where.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The adm module that `import name` (or `from name import ...`) executes: the longest known prefix."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in known:
            return candidate
    return None


def imports_of(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """The adm modules one file imports anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when it is one, else pkg itself.
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, known) if name.split(".")[0] == "adm" else None
            if target is not None and target != module:
                out.add(target)
    return out


def import_graph(where: Path = PACKAGE) -> dict[str, set[str]]:
    known = _modules(PACKAGE)
    files = _modules(where) if where != PACKAGE else known
    return {m: imports_of(p, m, known) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_walker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    known = {"adm": PACKAGE / "__init__.py", "adm.nn": PACKAGE, "adm.nn.unet": PACKAGE, "adm.cli": PACKAGE,
             "adm.cli.common": PACKAGE, "adm.hub": PACKAGE, "adm.hub.load": PACKAGE}
    src = tmp_path / "x.py"
    src.write_text("import torch\nfrom adm.nn import unet\n\ndef f():\n    from adm.cli.common import load_model\n"
                   "    from . import load\n")
    assert imports_of(src, "adm.hub.x", known) == {"adm.nn.unet", "adm.cli.common", "adm.hub.load"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_adms_modules():
    assert cycles(import_graph()) == []


def test_the_low_layers_never_import_compat_cli_or_train():
    bad = [(m, t) for m, targets in import_graph().items() if _in(m, LOW) for t in targets if _in(t, HIGH)]
    assert bad == []


def test_nothing_outside_the_command_line_imports_it():
    # adm/__main__.py is the entry point of `python -m adm`; scripts and benchmarks use the library.
    graphs = [import_graph(), *(import_graph(ROOT / d) for d in ("scripts", "benchmarks") if (ROOT / d).is_dir())]
    bad = [(m, t) for g in graphs for m, targets in g.items()
           if not _in(m, ("adm.cli", "adm.__main__")) for t in targets if _in(t, ("adm.cli",))]
    assert bad == []


@pytest.mark.parametrize("name", ["parse_device", "autocast", "atomic_write_bytes", "CompiledWithFallback"])
def test_runtime_helpers_are_defined_once(name):
    defined = [m for m, p in _modules().items()
               if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name
                      for n in ast.walk(ast.parse(p.read_text())))]
    assert defined == ["adm.runtime"]
