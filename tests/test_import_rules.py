"""The import rules of the code base, enforced by parsing every module's imports.

1. ``checks/`` imports nothing from ``pilot`` but ``pilot.api``.
2. ``pilot`` imports ``checks`` only where the built-ins are registered (``pilot/cli.py``).
3. No module imports another module's private (``_name``) names, nor reaches into them
   through an imported module however it was imported (``import a.b as x; x._f``,
   ``import a.b; a.b._f``, ``from a import b as x; x._f``). This holds for the tests, the
   test bed and the benchmarks too: what a test needs is a public, documented name, or it
   tests through the public API. A module named ``_name.py`` is private to its package: the
   package's modules may import it, and so may the package's own tests
   (``tests/test_<package>.py``, ``tests/test_<package>_*.py``) as a whole module, to test
   it directly; none may import a private name from it. Shared test helpers live in public
   modules (``tests/conftest.py``, ``tests/tls.py``, ``testbed/``), not in test files.
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
CODE = ("pilot", "checks", "server_stub", "bench", "testbed", "tests")
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


def _from_imports(
    module: str, path: Path, tree: ast.Module
) -> Iterator[tuple[str, ast.ImportFrom]]:
    """Each ``from x import ...`` with the absolute name of ``x``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            yield target, node


def imports(module: str, path: Path, tree: ast.Module) -> Iterator[Import]:
    for node in ast.walk(tree):  # function-level and TYPE_CHECKING imports count too
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, (), node.lineno)
    for target, node in _from_imports(module, path, tree):
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


def _own_tests(module: str, target: str) -> bool:
    """``tests.test_checks_builtin`` is a test of the ``checks`` package: it may import
    that package's private modules (``checks._db12``), though no private name in them."""
    top = target.partition(".")[0]
    return within(module.rpartition(".")[0], "tests") and (
        module.rpartition(".")[2] == f"test_{top}"
        or module.rpartition(".")[2].startswith(f"test_{top}_")
    )


def test_no_module_imports_another_modules_private_names() -> None:
    bad = []
    for imp in all_imports():
        if imp.target == imp.module or not any(within(imp.target, top) for top in CODE):
            continue
        for name in imp.names:
            full = f"{imp.target}.{name}"
            if _private(name) and not (
                full in MODULES
                and (_same_package(imp.module, full) or _own_tests(imp.module, full))
            ):
                bad.append(f"{imp.module}:{imp.line} imports {full}")
        if _private(imp.target.rpartition(".")[2]) and not _same_package(imp.module, imp.target):
            bad.append(f"{imp.module}:{imp.line} imports private module {imp.target}")
    assert bad == []


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def bindings(module: str, path: Path, tree: ast.Module) -> dict[str, str]:
    """The local names a module binds to modules of the code base, and to what.

    ``import a.b.c`` binds ``a`` (to ``a``), ``import a.b as x`` binds ``x`` to ``a.b``,
    ``from a import b`` and ``from a import b as x`` bind ``b``/``x`` to ``a.b`` when that is
    a module."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    bound[top] = top
    for imp, node in _from_imports(module, path, tree):
        for alias in node.names:
            if f"{imp}.{alias.name}" in MODULES:
                bound[alias.asname or alias.name] = f"{imp}.{alias.name}"
    return bound


def private_uses(module: str, path: Path, tree: ast.Module) -> list[str]:
    """Every ``m._x`` where ``m`` (an import, aliased or a dotted chain) names another
    module of the code base and ``_x`` is private to it."""
    bound = bindings(module, path, tree)
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        chain = _dotted(node.value)
        if chain is None:
            continue
        head, _, rest = chain.partition(".")
        if head not in bound:
            continue
        owner = ".".join(filter(None, [bound[head], rest]))
        if owner not in MODULES:
            continue
        if owner == module or _same_package(module, f"{owner}.{node.attr}"):
            continue
        bad.append(f"{module}:{node.lineno} uses {owner}.{node.attr}")
    return bad


def test_no_module_reaches_into_another_modules_private_names() -> None:
    bad = [use for module, path, tree in sources() for use in private_uses(module, path, tree)]
    assert bad == []


# Private names of the standard library the tests may use: os._exit is documented public
# API; argparse offers no public way to list a parser's options and subcommands.
STDLIB_PRIVATE = {"_exit", "_actions", "_SubParsersAction", "_HelpAction"}


def test_tests_touch_no_private_attribute_of_an_object() -> None:
    """Beyond imports: no test reads or sets ``obj._x`` of an object of the code base
    (``backend._request_id``, ``store._conn()``); an object's own methods use ``self._x``."""
    bad = [
        f"{module}:{node.lineno} uses {ast.unparse(node)}"
        for module, _, tree in sources()
        if within(module, "tests")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and node.attr not in STDLIB_PRIVATE
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert bad == []


SNIPPETS = {
    "import pilot.job.guardian as gg\ngg._apply": "pilot.job.guardian._apply",
    "import pilot.job.guardian\npilot.job.guardian._apply": "pilot.job.guardian._apply",
    "from pilot.job import guardian as gd\ngd._apply": "pilot.job.guardian._apply",
    "from pilot.job import guardian\nguardian._apply": "pilot.job.guardian._apply",
    "from pilot import job\njob.guardian._apply": "pilot.job.guardian._apply",
    "import pilot\ndef f():\n    return pilot.job.guardian._apply": "pilot.job.guardian._apply",
}


@pytest.mark.parametrize("source", sorted(SNIPPETS))
def test_the_private_name_rule_catches_every_import_form(source: str) -> None:
    path = REPO / "pilot" / "agent.py"
    found = private_uses("pilot.agent", path, ast.parse(source))
    assert found == [f"pilot.agent:{source.count(chr(10)) + 1} uses {SNIPPETS[source]}"]


def test_the_private_name_rule_allows_public_and_own_names() -> None:
    path = REPO / "pilot" / "job" / "guardian.py"
    source = "import pilot.job.guardian as g\ng.apply\nfrom pilot.job import jdl\njdl.parse\n"
    assert private_uses("pilot.job.guardian", path, ast.parse(source)) == []
    assert private_uses("pilot.job.guardian", path, ast.parse("import os\nos._exit")) == []


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
