"""The import rules of the code base, enforced by parsing every module's imports.

1. ``checks/`` imports nothing from ``pilot`` but ``pilot.api``.
2. ``pilot`` imports ``checks`` only where the built-ins are registered (``pilot/cli.py``).
3. No module imports another module's private (``_name``) names, nor reaches into them
   through an imported module (a package's own ``_module`` files are its business).
4. Each stage subpackage of ``pilot`` imports only what its docstring allows.
5. Benchmarks (and the test bed they share with the tests) import nothing from ``tests/``.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CODE = ("pilot", "checks", "server_stub", "bench", "testbed")
REGISTRATION = "pilot.cli"  # the one module of pilot that may import checks

# What each part of pilot may import from pilot (prefixes; "pilot" alone is the package's
# own __init__, i.e. __version__). Every module may import its own subpackage.
BASE = ("pilot", "pilot.errors")
ALLOWED: dict[str, tuple[str, ...]] = {
    "pilot.errors": ("pilot",),
    "pilot.proc": BASE,
    "pilot.cgroups": BASE,
    "pilot.config": BASE,
    "pilot.cliutil": BASE,  # what both command lines share (help layout, error lines)
    "pilot.grid": BASE,
    "pilot.node": (*BASE, "pilot.config", "pilot.proc", "pilot.cgroups", "pilot.api"),
    "pilot.api": (*BASE, "pilot.proc", "pilot.cgroups", "pilot.grid", "pilot.node.batch"),
    "pilot.job": (
        *BASE,
        "pilot.config",
        "pilot.proc",
        "pilot.cgroups",
        "pilot.grid",
        "pilot.backends.base",
    ),
    "pilot.backends": (
        *BASE,
        "pilot.config",
        "pilot.grid",
        "pilot.job.jdl",
        "pilot.job.jdl_expand",
        "pilot.job.archive",
        "pilot.job.outpack",
    ),
    # the composition roots: they wire the stages together
    "pilot.agent": ("pilot",),
    "pilot.cli": ("pilot",),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported from
    names: tuple[str, ...]  # names taken from it (empty for "import x")
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _parsed() -> tuple[tuple[str, Path, ast.Module], ...]:
    return tuple(
        (module_name(path), path, ast.parse(path.read_text(), str(path)))
        for top in CODE
        for path in sorted((REPO / top).rglob("*.py"))
    )


def sources() -> Iterator[tuple[str, Path, ast.Module]]:
    yield from _parsed()


def imports(module: str, path: Path, tree: ast.Module) -> Iterator[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):  # function-level and TYPE_CHECKING imports count too
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            yield Import(module, target, tuple(a.name for a in node.names), node.lineno)


@functools.cache
def _all_imports() -> tuple[Import, ...]:
    return tuple(imp for module, path, tree in sources() for imp in imports(module, path, tree))


def all_imports() -> list[Import]:
    return list(_all_imports())


MODULES = {module for module, _, _ in sources()}


def targets(imp: Import) -> list[str]:
    """The modules an import reaches: ``from pilot.job import jdl`` reaches pilot.job.jdl."""
    modules = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in MODULES]
    return modules if imp.names and len(modules) == len(imp.names) else [imp.target, *modules]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_rules_see_the_code() -> None:
    found = all_imports()
    assert len(MODULES) > 60 and len(found) > 300
    assert any(i.module == "pilot.cli" and within(i.target, "checks") for i in found)


def test_checks_import_only_the_api_from_pilot() -> None:
    bad = [
        f"{i.module}:{i.line} imports {t}"
        for i in all_imports()
        if within(i.module, "checks")
        for t in targets(i)
        if within(t, "pilot") and t != "pilot.api"
    ]
    assert bad == []


def test_benchmarks_import_nothing_from_the_tests() -> None:
    bad = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in all_imports()
        if (within(i.module, "bench") or within(i.module, "testbed")) and within(i.target, "tests")
    ]
    assert bad == []


def test_pilot_imports_checks_only_where_they_are_registered() -> None:
    bad = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in all_imports()
        if within(i.module, "pilot") and within(i.target, "checks") and i.module != REGISTRATION
    ]
    assert bad == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _same_package(module: str, target: str) -> bool:
    return target.rpartition(".")[0] == module.rpartition(".")[0] or within(target, module)


def test_no_module_imports_another_modules_private_names() -> None:
    bad = []
    for imp in all_imports():
        if imp.target == imp.module or not any(within(imp.target, top) for top in CODE):
            continue
        for name in imp.names:
            full = f"{imp.target}.{name}"
            if _private(name) and not (full in MODULES and _same_package(imp.module, full)):
                bad.append(f"{imp.module}:{imp.line} imports {full}")
        if _private(imp.target.rpartition(".")[2]) and not _same_package(imp.module, imp.target):
            bad.append(f"{imp.module}:{imp.line} imports private module {imp.target}")
    assert bad == []


def test_no_module_reaches_into_another_modules_private_names() -> None:
    bad = []
    for module, path, tree in sources():
        aliases = {}
        for imp in imports(module, path, tree):
            for name in imp.names:
                if f"{imp.target}.{name}" in MODULES:
                    aliases[name] = f"{imp.target}.{name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
                and not _same_package(module, f"{aliases[node.value.id]}.{node.attr}")
            ):
                bad.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert bad == []


def _rule_for(module: str) -> tuple[str, tuple[str, ...]] | None:
    for owner in sorted(ALLOWED, key=len, reverse=True):
        if within(module, owner):
            return owner, ALLOWED[owner]
    return None


@pytest.mark.parametrize("owner", sorted(ALLOWED))
def test_each_stage_imports_only_what_it_may(owner: str) -> None:
    bad = []
    for imp in all_imports():
        rule = _rule_for(imp.module)
        if rule is None or rule[0] != owner:
            continue
        _, allowed = rule
        for target in targets(imp):
            if not within(target, "pilot") or within(target, owner):
                continue
            if owner in ("pilot.agent", "pilot.cli") or any(
                target == a or (a != "pilot" and within(target, a)) for a in allowed
            ):
                continue
            bad.append(f"{imp.module}:{imp.line} imports {target}")
    assert bad == []


def test_every_pilot_module_has_a_rule() -> None:
    assert [m for m in MODULES if within(m, "pilot") and m != "pilot" and not _rule_for(m)] == []


def test_starting_the_pilot_imports_no_x509_parsing() -> None:
    """``cryptography`` (~30 ms of a ~100 ms start) is paid only by a pilot that reads a
    proxy or delegates one to a payload, never just for importing the CLI."""
    code = "import sys, pilot.cli; print([m for m in sys.modules if m.startswith('cryptography')])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
