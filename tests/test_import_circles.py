"""No import circles, between modules or between packages, so that each layer can be read, tested and moved on its
own (docs/architecture.md).

Imports are read statically (ast), also those inside functions; only the modules an import names count, not the
parent packages Python runs on the way. At package level a node is a package (a folder with `__init__.py`), and
each module directly in core/, pipeline/ or fixclip/ (outside any sub-package) is a node of its own.
"""
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from tests.conftest import REPO
from tests.stage_imports import CODE_ROOTS, _imported_names, _module_file

PACKAGE_ROOTS = ("core", "pipeline", "fixclip")


def module_imports() -> dict[str, set[str]]:
    """Repo-relative path of every code module -> the repo modules it imports (itself left out)."""
    graph = {}
    for path in sorted(p for root in CODE_ROOTS for p in (REPO / root).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        targets = {_module_file(name) for name in _imported_names(path)}
        graph[rel] = {t.relative_to(REPO).as_posix() for t in targets if t is not None} - {rel}
    return graph


def package_of(rel: str) -> str:
    """The node a module belongs to: its innermost package, or itself where that is a root package."""
    folder = Path(rel).parent
    while folder.parts and not (REPO / folder / "__init__.py").is_file():
        folder = folder.parent
    if len(folder.parts) <= 1:
        return rel[:-len(".py")].replace("/", ".").removesuffix(".__init__")
    return ".".join(folder.parts)


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (its nodes, the first repeated at the end), or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return list(reversed(exc.args[1]))
    return None


def test_circle_finds_a_circle_and_only_one():
    assert circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    found = circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert found[0] == found[-1] and set(found) == {"a", "b", "c"}


def test_package_of():
    assert package_of("pipeline/shard/writer.py") == "pipeline.shard"
    assert package_of("pipeline/shard/__init__.py") == "pipeline.shard"
    assert package_of("fixclip/eval/benchmarks/coco.py") == "fixclip.eval.benchmarks"
    assert package_of("pipeline/report.py") == "pipeline.report"
    assert package_of("core/outputs.py") == "core.outputs"
    assert package_of("fixclip/__init__.py") == "fixclip"


def test_no_module_imports_itself_through_others():
    found = circle(module_imports())
    assert found is None, "import circle: " + " -> ".join(found)


def test_no_package_imports_itself_through_others():
    graph, why = {}, {}
    for module, targets in module_imports().items():
        if module.split("/")[0] not in PACKAGE_ROOTS:
            continue
        node = graph.setdefault(package_of(module), set())
        for target in targets:
            other = package_of(target)
            if target.split("/")[0] in PACKAGE_ROOTS and other != package_of(module):
                node.add(other)
                why.setdefault((package_of(module), other), f"{module} imports {target}")
    found = circle(graph)
    assert found is None, "package import circle: " + "; ".join(why[edge] for edge in zip(found, found[1:]))
