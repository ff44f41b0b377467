"""The package's layering, read from its source: no import cycles (imports inside functions count too), and no
private name imported from another module of tledge."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tledge"


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        name = ".".join(p.relative_to(root.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]):
    """(imported module, names, line) of every import statement; `from pkg import sub` is pkg.sub when sub is a
    module (grimp's convention), else pkg."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield (sub, (), node.lineno) if sub in mods else (base, (a.name,), node.lineno)


def _graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for m, p in mods.items():
        for target, _, line in _imports(m, p, mods):
            if target in mods and target != m:
                graph[m].setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(graph[w])))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "tledge"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from tledge.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from tledge.c import g\n")
    (pkg / "c.py").write_text("from . import a\ndef g():\n    pass\n")
    (pkg / "d.py").write_text("from tledge.sub import b\n")  # into the cycle, not part of it
    assert _cycles(_graph(_modules(pkg))) == [["tledge.a", "tledge.c", "tledge.sub.b"]]


def test_no_import_cycles_in_tledge():
    graph = _graph(_modules())
    found = _cycles(graph)
    edges = [f"{a} -> {b} (line {graph[a][b]})" for comp in found for a in comp for b in graph[a] if b in comp]
    assert not found, "import cycles:\n" + "\n".join(edges)


def test_no_private_name_crosses_a_module_boundary():
    mods = _modules()
    crossing = [f"{p.relative_to(PACKAGE.parent)}:{line}: {target}.{n}"
                for m, p in mods.items() for target, names, line in _imports(m, p, mods)
                for n in names if target.startswith("tledge") and n.startswith("_") and not n.startswith("__")]
    crossing += [f"{p.relative_to(PACKAGE.parent)}:{line}: {target}"
                 for m, p in mods.items() for target, _, line in _imports(m, p, mods)
                 if target.startswith("tledge.") and any(part.startswith("_") and part not in ("_deps",)
                                                         for part in target.split(".")[1:])]
    assert not crossing, "private names imported from other modules:\n" + "\n".join(crossing)


TEMP_CALLS = {"mkdtemp", "mkstemp", "TemporaryDirectory", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"}


def _temp_calls_without_our_prefix(path: Path) -> list[str]:
    """tempfile calls in `path` that make a file or folder in $TMPDIR (no dir=) without a `tledge-` prefix."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        kw = {k.arg: k.value for k in node.keywords}
        if name not in TEMP_CALLS or "dir" in kw:
            continue
        prefix = kw.get("prefix")
        if isinstance(prefix, ast.JoinedStr) and prefix.values:
            prefix = prefix.values[0]
        if isinstance(prefix, ast.Name):  # a name the caller gives (logfiles: tledge-VERB-)
            continue
        if not (isinstance(prefix, ast.Constant) and str(prefix.value).startswith("tledge-")):
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return bad


def test_temporary_files_and_folders_in_tmpdir_are_named_tledge():
    """A killed export left tmpXXXXXXXX folders in $TMPDIR that nothing told apart from other programs': every
    temporary file or folder tledge makes there starts with `tledge-`."""
    bad = [hit for path in _modules().values() for hit in _temp_calls_without_our_prefix(path)]
    assert bad == [], bad
