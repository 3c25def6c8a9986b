"""References in prose, found and resolved: the machinery of tests/unit/test_doc_references.py.

Prose is README.md, docs/, deploy/ and every module, class and function docstring of
pipeline/, workers/, beat_schedule.py and tests/support (read with :mod:`ast`, so code, string
literals and comments are not prose). A reference is what can be checked mechanically: a path
under a root of the repository, a path written from inside a package (``folders/state.py``), a
dotted name under ``pipeline``, ``workers``, ``tests`` or ``beat_schedule`` (a module, an
attribute followed down the chain, or a Celery task name), ``Class.attribute`` of a class one
module of ours defines, a Sphinx cross-reference, a migration's number and an
``IMAP_PIPELINE_*`` variable. A name glued to something that makes it part of something else
is none: ``imap-pipeline.example``, ``https://host/docs/x``, ``app.pipeline``.

Each ``*_references`` function yields ``(file:line, reference)``; each ``*_resolves`` says
whether the reference names something that exists.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
DOCSTRING_ROOTS = ("pipeline", "workers", "tests/support")
PATH_ROOTS = ("pipeline", "workers", "tests", "deploy", "scripts", "docs", "migrations")
DOTTED_ROOTS = ("pipeline", "workers", "tests", "beat_schedule")
CODE_PACKAGES = ("pipeline.", "workers.", "tests.", "beat_schedule")
# Glued to any of these on its left, a name is part of something else (a host, a URL, a path,
# an attribute of another object, a Redis key prefix).
NOT_AFTER = r"(?<![\w./:~@$-])"
PATH = re.compile(NOT_AFTER + r"((?:" + "|".join(PATH_ROOTS) + r")/[\w.*/-]*)(::\w+)?")
DOTTED = re.compile(
    NOT_AFTER.replace("~", "")  # `~pipeline.x` is Sphinx's short form of a name
    + r"((?:"
    + "|".join(DOTTED_ROOTS)
    + r")(?:\.[A-Za-z_]\w*)+)(?![\w/-])"
)
# A class's attribute (`FolderRepository.by_role`, `Settings.sync.batch_size`).
CLASS_ATTRIBUTE = re.compile(NOT_AFTER + r"([A-Z]\w*(?:\.[A-Za-z_]\w*)+)(?![\w/-])")
# A Sphinx cross-reference: :func:`name`, :mod:`.sibling`, :meth:`~Class.method`.
ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|exc|obj|const):`~?([\w.]+)`")
# A path inside a package (`folders/state.py`, `tasks/`), as prose near its package writes it.
RELATIVE_PATH = re.compile(NOT_AFTER + r"([a-z_]\w*/(?:\w+/)*(?:\w+\.py)?)(?![\w.-])")
# A module written from inside a package, and an attribute of it (`messages/views.page_view`).
MODULE_ATTRIBUTE = re.compile(
    NOT_AFTER + r"([a-z_]\w*/(?:\w+/)*\w+)\.([A-Za-z_][\w.]*\w)(?![\w/-])"
)
# "migration 0321", "migrations `0901`-`0902`": a revision file's number.
MIGRATION = re.compile(r"\b[Mm]igrations?\s+`?(\d{4})`?(?:\s*[-\u2013]\s*`?(\d{4})`?)?")
VARIABLE = re.compile(r"IMAP_PIPELINE_[A-Z0-9_]*")
# The end of a dotted name that is a file name, not an attribute: `beat_schedule.py`.
FILE_SUFFIXES = {"py", "md", "toml", "yaml", "yml", "json", "txt", "ini", "cfg", "env"}


@dataclass(frozen=True)
class Prose:
    """A piece of text that names things, and where it starts."""

    path: Path
    line: int
    text: str
    module: str = ""  # a docstring's module (its package's name for an __init__.py)

    def at(self, offset: int) -> str:
        line = self.line + self.text.count("\n", 0, offset)
        return f"{self.path.relative_to(REPO).as_posix()}:{line}"


# --- where the prose is -----------------------------------------------------------------------


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def documents() -> Iterator[Prose]:
    """README.md, docs/ and the deploy files (their comments; names in them are checked too)."""
    paths = [README, *sorted((REPO / "docs").rglob("*.md"))]
    paths += sorted(p for p in (REPO / "deploy").rglob("*") if p.is_file() and p.suffix != ".json")
    for path in paths:
        yield Prose(path, 1, path.read_text())


def docstrings() -> Iterator[Prose]:
    """Every module, class and function docstring of the code the prose describes."""
    files = [REPO / "beat_schedule.py"]
    for root in DOCSTRING_ROOTS:
        files += sorted((REPO / root).rglob("*.py"))
    for path in files:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(parsed(path)):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                value = body[0].value.value
                if isinstance(value, str):
                    yield Prose(path, body[0].lineno, value, module)


@cache
def everything() -> tuple[Prose, ...]:
    return (*documents(), *docstrings())


# --- what a reference resolves to -------------------------------------------------------------


@cache
def task_names() -> frozenset[str]:
    """The names the workers register tasks under (``@app.task(name=...)``: a literal, or a
    constant the task module imports): a task name in prose is a reference too."""
    names = set()
    for path in sorted((REPO / "workers").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.walk(parsed(path)):
            if not (isinstance(node, ast.keyword) and node.arg == "name"):
                continue
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                names.add(node.value.value)
            elif isinstance(node.value, ast.Name):
                names.add(getattr(importlib.import_module(module), node.value.id))
    return frozenset(names)


@cache
def assigned_on_self(klass: type) -> frozenset[str]:
    """Attributes a class of ours sets on its instances (``self.name = ...`` in its methods)."""
    if not klass.__module__.startswith(CODE_PACKAGES):
        return frozenset()
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError):
        return frozenset()
    return frozenset(
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def attribute(owner: object, name: str) -> tuple[bool, object]:
    """Whether ``owner.name`` exists, and what the chain goes on from: its value, a field's
    type (pydantic fields: ``Settings.sync.batch_size``), or None when only its declaration is
    known (an annotation, an attribute set in ``__init__``), so the rest cannot be checked."""
    if hasattr(owner, name):
        return True, getattr(owner, name)
    if not isinstance(owner, type):
        return False, None
    fields = getattr(owner, "model_fields", {})
    if name in fields:
        return True, fields[name].annotation
    declared = any(
        name in getattr(k, "__annotations__", {}) or name in assigned_on_self(k)
        for k in owner.__mro__
    )
    return declared, None


@cache
def dotted_resolves(name: str) -> bool:
    """A module, or a module's attribute followed down the chain, or a task name (``x.*``:
    a family of task names, or a module's contents)."""
    if name in task_names():
        return True
    if name.endswith(".*"):
        family = name[:-1]
        return any(t.startswith(family) for t in task_names()) or dotted_resolves(name[:-2])
    parts = name.split(".")
    module = None
    for end in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError as exc:
            if exc.name is None or not ".".join(parts[:end]).startswith(exc.name):
                raise  # the module exists but imports something missing: a real error
            continue
        break
    if module is None:
        return False
    owner: object = module
    for part in parts[end:]:
        if owner is None:
            return True  # declared, of no type known here: what follows cannot be checked
        found, owner = attribute(owner, part)
        if not found:
            return False
    return True


def top_level_names(path: Path) -> set[str]:
    return {
        node.name
        for node in parsed(path).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }


@cache
def made_by_users() -> frozenset[str]:
    """Paths .gitignore names one by one (``deploy/compose.env``): files a user makes from an
    example the repository ships, so prose may name them although a clone has none."""
    lines = (REPO / ".gitignore").read_text().splitlines()
    return frozenset(line.strip("/ ") for line in lines if "/" in line and "*" not in line)


def path_resolves(path: str, member: str | None) -> bool:
    if path.rstrip("/") in made_by_users():
        return True
    if "*" in path:
        return any(REPO.glob(path.rstrip("/")))
    target = REPO / path
    if not target.exists():
        return False
    return member is None or member[2:] in top_level_names(target)


@cache
def code_tree() -> tuple[frozenset[str], frozenset[str]]:
    """(every file and folder under the code roots, the names of those folders)."""
    paths = [
        p.relative_to(REPO).as_posix()
        for root in ("pipeline", "workers", "tests", "migrations")
        for p in (REPO / root).rglob("*")
        if "__pycache__" not in p.parts
    ]
    folders = frozenset(Path(p).name for p in paths if (REPO / p).is_dir())
    return frozenset(paths), folders


def relative_path_resolves(path: str) -> bool:
    """Some file or folder of the code ends with ``path`` (``folders/state.py`` is
    ``pipeline/folders/state.py``); ``path.py:name`` is an attribute of that module."""
    paths, _ = code_tree()
    path, _, attribute = path.partition(":")
    found = [p for p in paths if p.endswith("/" + path.rstrip("/"))]
    if not attribute:
        return bool(found)
    modules = [".".join(Path(p).with_suffix("").parts) for p in found]
    return any(dotted_resolves(f"{module}.{attribute}") for module in modules)


# --- the references ---------------------------------------------------------------------------


def path_references(prose: Prose) -> Iterator[tuple[str, str, str | None]]:
    """(where, path, ``::member`` or None) for each path the prose names."""
    for match in PATH.finditer(prose.text):
        path = match.group(1).rstrip(".-")  # a sentence's full stop, a dash after the name
        yield prose.at(match.start()), path, match.group(2)


def relative_path_references(prose: Prose) -> Iterator[tuple[str, str]]:
    """Paths that start inside a package: checked only when their first folder is a folder of
    the code (``sync/run.py``, not ``conf.d/10-mail.conf`` or ``and/or``)."""
    _, folders = code_tree()
    for match in RELATIVE_PATH.finditer(prose.text):
        path = match.group(1)
        first = path.split("/", 1)[0]
        if first in PATH_ROOTS or first not in folders or path == first + "/":
            continue
        yield prose.at(match.start()), path
    for match in MODULE_ATTRIBUTE.finditer(prose.text):
        module, attribute = match.groups()
        first = module.split("/", 1)[0]
        if first in PATH_ROOTS or first not in folders or attribute in FILE_SUFFIXES:
            continue
        yield prose.at(match.start()), f"{module}.py:{attribute}"


def dotted_references(prose: Prose) -> Iterator[tuple[str, str]]:
    for match in DOTTED.finditer(prose.text):
        name = match.group(1)
        if name.rsplit(".", 1)[1] in FILE_SUFFIXES:
            continue
        if prose.text.startswith(".*", match.end()):
            name += ".*"
        yield prose.at(match.start()), name


@cache
def our_classes() -> dict[str, list[str]]:
    """Class name -> the modules of pipeline/, workers/ and tests/support that define it."""
    classes: dict[str, list[str]] = {}
    for root in ("pipeline", "workers", "tests/support"):
        for path in sorted((REPO / root).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            for node in parsed(path).body:
                if isinstance(node, ast.ClassDef):
                    classes.setdefault(node.name, []).append(module)
    return classes


def class_attribute_references(prose: Prose) -> Iterator[tuple[str, str]]:
    """``Class.attribute`` where exactly one module of ours defines a class of that name, as
    the dotted name it stands for (``pipeline.folders.repository.FolderRepository.by_role``);
    other names (``Connection.execute``, a class two modules define) are not checked."""
    for match in CLASS_ATTRIBUTE.finditer(prose.text):
        name = match.group(1)
        modules = our_classes().get(name.split(".", 1)[0], [])
        if len(modules) == 1:
            yield prose.at(match.start()), f"{modules[0]}.{name}"


@cache
def defined_names() -> frozenset[str]:
    """Every name our code defines or assigns: functions, classes, module and class variables,
    attributes set on instances (what an unqualified :func:`name` may mean)."""
    names = set()
    for root in ("pipeline", "workers", "tests/support"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(parsed(path)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.id if isinstance(node, ast.Name) else node.attr)
    return frozenset(names)


def role_references(prose: Prose) -> Iterator[tuple[str, str]]:
    """Sphinx references that name no root (those are dotted references), as the name they
    stand for: a relative one (``.tables``, ``..errors``) made absolute; any other as written,
    prefixed with the docstring's module and a ``?`` (``pipeline.api.deps?Cursor``)."""
    for match in ROLE.finditer(prose.text):
        name = match.group(1)
        if name.split(".", 1)[0] in DOTTED_ROOTS:
            continue
        if name.startswith("."):
            package = prose.module.split(".")
            if prose.path.name != "__init__.py":
                package = package[:-1]
            dots = len(name) - len(name.lstrip("."))
            base = package[: len(package) - dots + 1]
            yield prose.at(match.start()), ".".join([*base, name.lstrip(".")])
        else:
            yield prose.at(match.start()), f"{prose.module}?{name}"


def role_resolves(reference: str) -> bool:
    """An absolute name resolves as a dotted one. ``module?name`` resolves when ``name`` is
    importable (``ssl.SSLContext``), in the module's namespace (what it defines or imports), or
    when our code defines its last part anywhere (Sphinx searches too; ``Cursor`` in
    another module's docstring): a name defined nowhere is gone."""
    if "?" not in reference:
        return dotted_resolves(reference)
    module, name = reference.split("?")
    return (
        name.rsplit(".", 1)[-1] in defined_names()
        or dotted_resolves(name)
        or (bool(module) and dotted_resolves(f"{module}.{name}"))
    )


def variable_references(prose: Prose) -> Iterator[tuple[str, str]]:
    """``IMAP_PIPELINE_*`` names; a family (``IMAP_PIPELINE_LISTENER_*``, ``IMAP_PIPELINE_``)
    is not a variable."""
    for match in VARIABLE.finditer(prose.text):
        name = match.group(0)
        if name.endswith("_") or prose.text[match.end() : match.end() + 1] == "*":
            continue
        yield prose.at(match.start()), name
