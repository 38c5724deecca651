"""The house describes itself: no import circles, and every citation of the architecture document
lands on a heading it has (docs/architecture.md#the-rooms).

Static checks only (``ast`` and the file tree): no Docker, no network, well under a second.
"""

from __future__ import annotations

import ast
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

DOC = "docs/architecture.md"
PACKAGES = ("runner", "entrypoint")  # the rooms whose imports are walked

# How an import is reached when its module is loaded: only MODULE_LEVEL ones run at import time,
# so only those can make a circle that fails (a partially initialised module). FUNCTION_LOCAL
# ones run when the function is called (by then both modules are loaded); TYPE_CHECKING ones
# never run. The walk records all three, and prints circles of every kind, because a circle
# through a function-local import is still a design smell worth seeing.
MODULE_LEVEL, FUNCTION_LOCAL, TYPE_CHECKING = "module-level", "function-local", "type-checking"


# ---- the files the checks read ----

def project_files() -> list[Path]:
    """Tracked files plus untracked ones git does not ignore (a new module counts before its
    commit). Without git (a copied tree), every file outside hidden folders and the venv."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not any(part.startswith(".") or part in ("__pycache__", "node_modules")
                                            for part in p.relative_to(ROOT).parts)]
    # A file deleted in the work tree but still in the index is not part of the house.
    return sorted(ROOT / n for n in set(names) if (ROOT / n).is_file())


def text_of(path: Path) -> str | None:
    """The file as text, or None for binary files (nothing they hold is a citation)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


# ---- (a) the import walk ----

def module_name(rel: Path) -> str:
    """``runner/launch/supervisor.py`` → ``runner.launch.supervisor``; a package's
    ``__init__.py`` is the package itself."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass
class ImportGraph:
    """Edges between project modules, each tagged with how the import is reached."""

    modules: dict[str, Path] = field(default_factory=dict)  # name → file
    edges: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # src → dst → kinds

    def add(self, src: str, dst: str, kind: str) -> None:
        if dst != src:  # a package importing its own name is not a circle
            self.edges.setdefault(src, {}).setdefault(dst, set()).add(kind)

    def targets(self, src: str, kinds: set[str]) -> set[str]:
        return {dst for dst, how in self.edges.get(src, {}).items() if how & kinds}

    def resolve(self, dotted: str) -> str | None:
        """The project module an import of ``dotted`` loads: the longest prefix that is one."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            name = ".".join(parts[:n])
            if name in self.modules:
                return name
        return None


def _is_type_checking_guard(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module with how it is reached (see MODULE_LEVEL)."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, kind))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, FUNCTION_LOCAL)
            elif isinstance(child, ast.If) and _is_type_checking_guard(child) and kind == MODULE_LEVEL:
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), TYPE_CHECKING)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), MODULE_LEVEL)
            else:
                visit(child, kind)  # class bodies, try/except, if/else at module level run on import

    visit(tree, MODULE_LEVEL)
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES,
                 files: list[Path] | None = None) -> ImportGraph:
    """The import edges among ``packages``' modules (``files``: default, the project's)."""
    graph = ImportGraph()
    for path in project_files() if files is None else files:
        rel = path.relative_to(root)
        if path.suffix == ".py" and rel.parts[0] in packages:
            graph.modules[module_name(rel)] = path
    for src, path in graph.modules.items():
        is_package = path.name == "__init__.py"
        for node, kind in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                if node.level:
                    # Relative: level 1 is the module's own package (for __init__, itself).
                    base = src.split(".") if is_package else src.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # ``from pkg import mod`` loads pkg.mod when it is a module, else pkg.
                names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in graph.modules else prefix
                         for a in node.names]
            for name in names:
                dst = graph.resolve(name)
                if dst is not None:
                    graph.add(src, dst, kind)
    return graph


def circles(graph: ImportGraph, kinds: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module over edges of ``kinds`` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.targets(v, kinds)):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph.modules):
        if v not in index:
            strongconnect(v)
    return sorted(groups)


def test_import_walk_sees_the_project():
    """The walk must find what the house holds, or finding no circle would prove nothing."""
    graph = import_graph()
    assert {"entrypoint.record", "runner.launch.supervisor", "runner.cli.main"} <= set(graph.modules)
    assert any(dst.startswith("entrypoint.record")
               for dst in graph.targets("runner.launch.supervisor", {MODULE_LEVEL}))
    kinds_seen = {kind for dsts in graph.edges.values() for how in dsts.values() for kind in how}
    # The CLI imports its commands' libraries inside functions, and several modules import
    # types under TYPE_CHECKING: if either kind vanished, the walk would have stopped seeing it.
    assert kinds_seen == {MODULE_LEVEL, FUNCTION_LOCAL, TYPE_CHECKING}


def test_the_walk_finds_a_circle_when_there_is_one(tmp_path: Path):
    """The circle finder itself, on a graph with one module-level circle and one local one."""
    graph = ImportGraph(modules={m: tmp_path for m in ("a", "b", "c", "d")})
    graph.add("a", "b", MODULE_LEVEL)
    graph.add("b", "a", MODULE_LEVEL)
    graph.add("c", "d", MODULE_LEVEL)
    graph.add("d", "c", FUNCTION_LOCAL)
    assert circles(graph, {MODULE_LEVEL}) == [["a", "b"]]
    assert circles(graph, {MODULE_LEVEL, FUNCTION_LOCAL}) == [["a", "b"], ["c", "d"]]


def test_relative_and_from_imports_resolve_to_project_modules(tmp_path: Path):
    pkg = tmp_path / "runner" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "runner" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import leaf\n")
    (pkg / "leaf.py").write_text("def f():\n    from ..sub import other\n")
    (pkg / "other.py").write_text("from runner.sub.leaf import f\n")
    graph = import_graph(tmp_path, ("runner",), files=sorted(tmp_path.rglob("*.py")))
    assert graph.targets("runner.sub", {MODULE_LEVEL}) == {"runner.sub.leaf"}
    assert graph.targets("runner.sub.leaf", {FUNCTION_LOCAL}) == {"runner.sub.other"}
    assert graph.targets("runner.sub.other", {MODULE_LEVEL}) == {"runner.sub.leaf"}
    assert circles(graph, {MODULE_LEVEL}) == []
    assert circles(graph, {MODULE_LEVEL, FUNCTION_LOCAL}) == [["runner.sub.leaf", "runner.sub.other"]]


def test_runner_and_entrypoint_have_no_import_circles():
    graph = import_graph()
    every = circles(graph, {MODULE_LEVEL, FUNCTION_LOCAL, TYPE_CHECKING})
    print(f"{len(graph.modules)} modules; circles counting function-local and TYPE_CHECKING "
          f"imports too: {every or 'none'}")
    assert circles(graph, {MODULE_LEVEL}) == []


def test_entrypoint_imports_nothing_from_runner_at_any_depth():
    """The agent travels into images without ``runner/``. tests/test_entrypoint_imports.py checks
    the top-level modules by name and by loading them; this covers subpackages (the record may
    become ``entrypoint/record/``) and imports inside functions, which that load never runs."""
    graph = import_graph()
    leaks = {src: sorted(dst for dst in graph.edges.get(src, {}) if dst.split(".")[0] == "runner")
             for src in graph.modules if src.split(".")[0] == "entrypoint"}
    assert {src: dsts for src, dsts in leaks.items() if dsts} == {}


# ---- (b) citations of the architecture document ----

def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (``-`` and ``_``
    kept), each space a hyphen; inline code and link markup reduced to their text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) → text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def doc_anchors(doc: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets ``-1``, ``-2``... as on GitHub."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in doc.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_fence:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


CITATION = re.compile(r"docs/architecture\.md#([A-Za-z0-9_\-]+)")


def test_github_slugs():
    assert github_slug("The supervisor's safety rules") == "the-supervisors-safety-rules"
    assert github_slug("On the VM (COS)") == "on-the-vm-cos"
    assert github_slug("Plan, then act") == "plan-then-act"
    assert github_slug("`runs/ID/` objects") == "runsid-objects"
    assert doc_anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_architecture_document_exists_with_its_sections():
    anchors = doc_anchors((ROOT / DOC).read_text())
    for needed in ("the-rooms", "the-run-record", "the-state-machine", "attempts",
                   "the-supervisors-safety-rules", "recovery-strategies", "properties-that-must-hold",
                   "the-stand-ins", "borrowed-habits"):
        assert needed in anchors


def test_every_citation_of_the_architecture_document_lands_on_a_heading():
    anchors = doc_anchors((ROOT / DOC).read_text())
    cited: dict[str, list[str]] = {}
    for path in project_files():
        text = text_of(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for anchor in CITATION.findall(line):
                cited.setdefault(anchor, []).append(f"{path.relative_to(ROOT)}:{n}")
    assert cited, "no file cites the architecture document: the check would prove nothing"
    missing = {a: where for a, where in cited.items() if a not in anchors}
    assert missing == {}, f"anchors cited but not headings of {DOC}"


def test_the_document_links_only_to_its_own_headings():
    doc = (ROOT / DOC).read_text()
    anchors = doc_anchors(doc)
    assert {a for a in re.findall(r"\]\(#([^)]+)\)", doc) if a not in anchors} == set()


# ---- (c) no citations of documents the repository does not hold ----

# Spelled so that this file does not match itself.
OUTSIDE_DOCS = re.compile("DESIGN" + r"(\.md|\s*§|'s\b)" + "|" + "STYLE" + r"\.md")


def test_no_file_cites_design_or_style_documents_the_repository_lacks():
    offenders = []
    for path in project_files():
        rel = path.relative_to(ROOT)
        text = text_of(path)
        if rel.parts[0] == "docs" or text is None:
            continue
        offenders += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE_DOCS.search(line)]
    assert offenders == []


def test_the_outside_citation_pattern_matches_what_it_must():
    d, s = "DESIGN", "STYLE"  # apart, for the same reason as the pattern
    for cited in (f"({d} §4)", f"{d}.md §3", f"see {s}.md", f"{d}'s plan, then act"):
        assert OUTSIDE_DOCS.search(cited), cited
    assert not OUTSIDE_DOCS.search("the design of the record (docs/architecture.md#the-run-record)")
