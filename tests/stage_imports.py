"""The repository modules a DVC stage's command imports, found statically (ast), to check dvc.yaml's code deps.

Every import statement counts, also those inside functions, and every package `__init__.py` on the way (Python
runs it). Params-schema modules (`pipeline/params/`) are exempt and not followed: they only validate, and the
values they validate are tracked by the stage's `params:`. A package `__init__.py` holding only a docstring is
exempt too: it cannot change what a stage computes.
"""
import ast
from functools import lru_cache
from pathlib import Path

import yaml

from tests.conftest import REPO

CODE_ROOTS = ("stages", "pipeline", "fixclip", "core")
EXEMPT = ("pipeline/params/",)


def _module_file(dotted: str) -> Path | None:
    base = REPO.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> list[str]:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    return parts[:-1] if parts[-1] == "__init__" else parts[:-1]


def _imported_names(path: Path) -> set[str]:
    """Dotted names this file imports (absolute, relative resolved), including `from a import b` as `a.b`."""
    names = set()
    package = _package_of(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in CODE_ROOTS}


def _with_packages(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _exempt(rel: str) -> bool:
    if rel.startswith(EXEMPT):
        return True
    if rel.endswith("__init__.py"):
        body = ast.parse((REPO / rel).read_text()).body
        return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)
    return False


@lru_cache(maxsize=None)
def imported_files(module: str) -> frozenset[str]:
    """Repo-relative paths of the modules `python -m <module>` imports (transitively), exemptions left out."""
    seen, todo = set(), [module]
    while todo:
        for name in _with_packages(todo.pop()):
            path = _module_file(name)
            if path is None:
                continue
            rel = path.relative_to(REPO).as_posix()
            if rel in seen:
                continue
            seen.add(rel)
            if not rel.startswith(EXEMPT):
                todo.extend(_imported_names(path))
    return frozenset(rel for rel in seen if not _exempt(rel))


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    cmd = stage["cmd"].split()
    assert cmd[:2] == ["python", "-m"], f"expected `python -m <module>`, got {stage['cmd']!r}"
    return cmd[2]


def code_deps(stage: dict) -> list[str]:
    """The stage's deps that are code (under stages/, pipeline/, fixclip/), folders without a trailing slash."""
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    return [d.rstrip("/") for d in deps if d.split("/")[0] in CODE_ROOTS]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep + "/") for dep in deps)
