"""``roles`` is the protocol and nothing else: no I/O, no clock, no randomness.

Three independent checks, so that no single loophole hides an impure import:

1. Every ``roles/**/*.py`` is parsed with :mod:`ast`; an import of a forbidden
   module anywhere in it (top level, inside a function, under ``TYPE_CHECKING``)
   fails.
2. ``roles`` and each of its modules is imported in a fresh interpreter whose
   ``__import__`` refuses forbidden modules *when the importer is a roles
   module*. This also catches modules already loaded at interpreter start-up
   (``time`` always is), because ``import x`` calls ``__import__`` even then.
3. The project's import-linter contract passes (``lint-imports``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

FORBIDDEN = frozenset(
    {
        # Named by the style guide and the import-linter contract.
        "grpc",
        "sqlalchemy",
        "structlog",
        "asyncio",
        "time",
        "random",
        "socket",
        "threading",
        "os",
        "paxos_service",
        # The same ideas by other names: clocks, entropy, processes, I/O, and
        # dynamic imports that would get round this test.
        "datetime",
        "secrets",
        "uuid",
        "subprocess",
        "multiprocessing",
        "concurrent",
        "selectors",
        "select",
        "io",
        "logging",
        "sqlite3",
        "pathlib",
        "importlib",
    }
)


def roles_sources() -> list[Path]:
    sources = sorted(ROLES.rglob("*.py"))
    assert ROLES / "__init__.py" in sources
    return sources


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def forbidden_imports(source: str, filename: str) -> list[str]:
    """Every import of a FORBIDDEN module in ``source``, as "line: module"."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            found.append(f"{node.lineno}: __import__() call")
            continue
        else:
            continue
        found += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_the_ast_check_catches_a_forbidden_import() -> None:
    """The checker itself: it must see imports wherever they hide."""
    source = textwrap.dedent(
        """
        import dataclasses
        from roles.ballot import Ballot
        import time
        from os import path
        def f():
            import random.seed
            return __import__("socket")
        """
    )
    assert forbidden_imports(source, "<test>") == [
        "4: time",
        "5: os",
        "7: random.seed",
        "8: __import__() call",
    ]


@pytest.mark.parametrize("path", roles_sources(), ids=lambda p: p.name)
def test_roles_source_imports_nothing_impure(path: Path) -> None:
    found = forbidden_imports(path.read_text(), str(path))
    assert found == [], f"{path.relative_to(REPO)} imports forbidden modules: {found}"


GUARD = textwrap.dedent(
    """
    import builtins, json, sys

    forbidden, modules = frozenset(json.loads(sys.argv[1])), json.loads(sys.argv[2])
    real_import = builtins.__import__
    refused = []

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__") or ""
        if level == 0 and importer.split(".")[0] == "roles" and name.split(".")[0] in forbidden:
            refused.append(f"{importer} imports {name}")
            raise ImportError(f"roles must stay pure: {importer} imports {name}")
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded_import
    try:
        for module in modules:
            __import__(module)
    except ImportError as error:
        print(error)
    print(json.dumps(refused))
    sys.exit(1 if refused else 0)
    """
)


def run_guarded_import(modules: list[str]) -> subprocess.CompletedProcess[str]:
    # -I: isolated mode (no PYTHON* variables, no user site, no cwd on sys.path),
    # so the only way to find ``roles`` is the REPO directory we put first.
    code = f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + GUARD
    return subprocess.run(
        [sys.executable, "-I", "-c", code, json.dumps(sorted(FORBIDDEN)), json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_roles_imports_in_an_interpreter_that_refuses_impure_modules() -> None:
    modules = [module_name(path) for path in roles_sources()]
    assert "roles" in modules
    assert "roles.proposer" in modules
    result = run_guarded_import(modules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_guard_refuses_what_it_should(tmp_path: Path) -> None:
    """The guard, on a throwaway package that does what roles must not."""
    package = tmp_path / "roles_probe"
    package.mkdir()
    (package / "__init__.py").write_text("import time\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + GUARD.replace(
        'importer.split(".")[0] == "roles"', 'importer == "roles_probe"'
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, json.dumps(["time"]), json.dumps(["roles_probe"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "roles_probe imports time" in result.stdout


def test_import_linter_contract_is_kept() -> None:
    assert LINT_IMPORTS.exists(), "import-linter is a dev dependency: run `make install`"
    # --no-cache: do not leave a cache directory in the working tree.
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "roles/ is pure" in result.stdout
