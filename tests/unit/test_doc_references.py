"""What the prose names exists: when code moves, the docs and docstrings that name it move too.

README.md, docs/, deploy/ and the docstrings of pipeline/, workers/, beat_schedule.py and
tests/support name modules and objects (``pipeline.outbound.submit``,
``pipeline.grants.service.open_counted_session``), files (``workers/tasks/sync.py``), Celery
task names (``pipeline.sync.folder``) and settings (``IMAP_PIPELINE_SYNC_LOCK_TTL_S``). Nothing
fails when one of them rots, so this test resolves every such reference it can check
mechanically:

- a path under ``pipeline/``, ``workers/``, ``tests/``, ``deploy/``, ``scripts/``, ``docs/`` or
  ``migrations/`` exists (a ``*`` is a glob that matches something; ``path.py::name`` names a
  top-level function or class of that file), and one written from inside a package
  (``folders/state.py``, when ``folders`` is a folder of the code) is the end of a real path;
- a dotted name starting ``pipeline.``, ``workers.``, ``tests.`` or ``beat_schedule.`` is a
  module, an attribute of one (classes' attributes and fields included), or a task name the
  workers register;
- a migration named by number ("migration 0321") is a revision file;
- a Sphinx reference in a docstring (:func:`name`, :mod:`.sibling`) names something: a
  relative one resolves from its module's package, an unqualified one is defined somewhere in
  our code (or importable, or in the namespace of the module whose docstring it is);
- ``Class.attribute`` resolves where exactly one module of ours defines the class;
- an ``IMAP_PIPELINE_*`` name outside the README is a variable the settings loader reads
  (:func:`pipeline.config.variable_names`), a shell knob of ``deploy/Procfile`` or
  ``deploy/compose.yaml``, or one of the test suite's own (``tests/conftest.py``); and every
  variable the loader reads has a row in the README's configuration table.
  (The README's names being read is ``tests/unit/test_config.py``'s.)

And docs/ARCHITECTURE.md's pictures stay the tree: its layout names every package and module
of pipeline/ and workers/, and the layers it draws are the import graph (each line imports only
from the lines below it; import-linter enforces the contracts, this the drawing).

Docstrings are read with :mod:`ast` (so code, string literals and comments are not prose), the
Markdown and deploy files as text. A reference is a name glued to nothing that could make it
part of something else: ``imap-pipeline.example``, ``https://host/docs/x`` and ``app.pipeline``
are not references. The failure lists every broken reference as file:line, so one pass fixes
them all. Prose about the past ("was ``api/queries.py``") names what is gone: write it in the
present instead (what the thing is now, where it lives).
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

import grimp

from pipeline.config import variable_names

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
    ``pipeline/folders/state.py``)."""
    paths, _ = code_tree()
    return any(p.endswith("/" + path.rstrip("/")) for p in paths)


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


# --- the settings -----------------------------------------------------------------------------


def deploy_knobs() -> set[str]:
    """Variables the process files expand themselves (``${IMAP_PIPELINE_X:-default}``)."""
    text = "".join((REPO / "deploy" / name).read_text() for name in ("Procfile", "compose.yaml"))
    return set(re.findall(r"\$\{(IMAP_PIPELINE_[A-Z0-9_]+)", text))


def suite_variables() -> set[str]:
    """``TEST_ONLY_VARIABLES`` of tests/conftest.py: read by the test suite, not the program."""
    tree = ast.parse((REPO / "tests" / "conftest.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TEST_ONLY_VARIABLES" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return set(value)
    raise AssertionError("tests/conftest.py has no TEST_ONLY_VARIABLES")


def readme_table_rows() -> list[str]:
    return re.findall(r"^\| `IMAP_PIPELINE_.*$", README.read_text(), flags=re.M)


def readme_table_covers(variable: str, rows: list[str]) -> bool:
    """A row's first cell names the variable, whole (``IMAP_PIPELINE_WEBHOOK_BACKOFF_BASE_S``),
    as a shorthand of the row's first name (``_BACKOFF_MAX_S``), or as a family the row sends
    the reader on from (``IMAP_PIPELINE_LISTENER_*``: ``imap-pipeline listen --help``)."""
    for row in rows:
        first_cell = row.split("|")[1]
        names = set(re.findall(r"`(IMAP_PIPELINE_[A-Z0-9_]*[A-Z0-9])`", first_cell))
        family = re.match(r" `(IMAP_PIPELINE_[A-Z0-9]+)", first_cell)
        if family is not None:
            names |= {family.group(1) + s for s in re.findall(r"`(_[A-Z0-9_]+)`", first_cell)}
        if variable in names:
            return True
        if any(variable.startswith(f[:-1]) for f in re.findall(r"`(IMAP_PIPELINE_\w*_\*)`", row)):
            return True
    return False


# --- the tests --------------------------------------------------------------------------------


def test_every_path_the_prose_names_exists() -> None:
    broken = [
        f"{where}: {path}{member or ''}"
        for prose in everything()
        for where, path, member in path_references(prose)
        if not path_resolves(path, member)
    ]
    broken += [
        f"{where}: {path} (under no package)"
        for prose in everything()
        for where, path in relative_path_references(prose)
        if not relative_path_resolves(path)
    ]
    assert broken == [], "paths that do not exist:\n" + "\n".join(broken)


def test_every_migration_the_prose_names_exists() -> None:
    numbers = {p.name[:4] for p in (REPO / "migrations" / "versions").glob("*.py")}
    broken = [
        f"{prose.at(match.start())}: {number}"
        for prose in everything()
        for match in MIGRATION.finditer(prose.text)
        for number in match.groups()
        if number is not None and number not in numbers
    ]
    assert broken == [], "migrations that do not exist:\n" + "\n".join(broken)


def test_every_dotted_name_the_prose_names_resolves() -> None:
    broken = [
        f"{where}: {name}"
        for prose in everything()
        for where, name in [*dotted_references(prose), *class_attribute_references(prose)]
        if not dotted_resolves(name)
    ]
    broken += [
        f"{where}: {name.rsplit('?', 1)[-1]}"
        for prose in everything()
        for where, name in role_references(prose)
        if not role_resolves(name)
    ]
    assert broken == [], "names that are no module, attribute or task:\n" + "\n".join(broken)


def test_every_setting_the_prose_names_is_read() -> None:
    known = variable_names() | deploy_knobs() | suite_variables()
    broken = [
        f"{where}: {name}"
        for prose in everything()
        if prose.path != README  # tests/unit/test_config.py holds the README to the loader
        for where, name in variable_references(prose)
        if name not in known
    ]
    assert broken == [], "variables nothing reads:\n" + "\n".join(broken)


def test_every_setting_the_loader_reads_has_a_readme_row() -> None:
    rows = readme_table_rows()
    missing = sorted(v for v in variable_names() if not readme_table_covers(v, rows))
    assert missing == [], "README.md's configuration table lacks: " + ", ".join(missing)


def layout_entries() -> tuple[dict[str, set[str]], set[str]]:
    """The layout drawn in docs/ARCHITECTURE.md (the fenced block that starts ``pipeline/``):
    (package -> the words of its entry, every word of the block)."""
    blocks = re.findall(r"^```\n(.*?)^```", ARCHITECTURE.read_text(), flags=re.M | re.S)
    block = next(b for b in blocks if b.startswith("pipeline/\n"))
    entries: dict[str, set[str]] = {}
    for entry in re.split(r"^(?=  \S)", block, flags=re.M):
        package = re.match(r"  (\w+)/\s", entry)
        if package is not None:
            entries[package.group(1)] = set(re.findall(r"\w+", entry))
    return entries, set(re.findall(r"\w+", block))


def test_the_layout_names_every_package_and_module() -> None:
    """A newcomer reads the layout to find a concern's home: a package moved, added or split
    without its line there is a home the page hides."""
    entries, words = layout_entries()
    missing = []
    for root in ("pipeline", "workers"):
        for path in sorted((REPO / root).iterdir()):
            if path.suffix == ".py" and path.stem != "__init__" and path.stem not in words:
                missing.append(f"{root}/{path.name}")
            if not (path / "__init__.py").exists():
                continue
            if root == "pipeline" and path.name not in entries:
                missing.append(f"{root}/{path.name}/ (no entry of its own)")
            inside = entries.get(path.name, words)
            missing += [
                f"{root}/{path.name}/{child.name}"
                for child in sorted(path.iterdir())
                if child.stem not in {"__init__", "__pycache__", "__main__"}
                and child.stem not in inside
                and (child.suffix == ".py" or (child / "__init__.py").exists())
            ]
    assert missing == [], "docs/ARCHITECTURE.md's layout does not name: " + ", ".join(missing)


def drawn_layers(top: str) -> list[set[str]]:
    """The layers docs/ARCHITECTURE.md draws in the fenced block whose first line is ``top``,
    top down: the names before each line's description (``drafts * | schema``); a line that
    starts further in continues a description."""
    for block in re.findall(r"^  ```\n(.*?)^  ```", ARCHITECTURE.read_text(), flags=re.M | re.S):
        if block.startswith(f"  {top} "):
            lines = [line[2:] for line in block.splitlines() if re.match(r"  \S", line)]
            return [set(re.findall(r"\w+", re.split(r"\s{2,}", line)[0])) for line in lines]
    raise AssertionError(f"docs/ARCHITECTURE.md draws no layers starting {top!r}")


def imports_between_children(root: str) -> set[tuple[str, str]]:
    """(a, b) for each import of a module under ``root.b`` by one under ``root.a`` (a != b),
    as import-linter counts them (type-checking imports included)."""
    graph = grimp.build_graph(root, cache_dir=None)
    pairs = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = importer.split(".")[1:2], imported.split(".")[1:2]
            if a and b and a != b:
                pairs.add((a[0], b[0]))
    return pairs


def test_the_layers_drawn_are_the_imports() -> None:
    """The layers drawn for pipeline and workers name each package or module once, and each
    imports only from the lines below its own: the picture is the import graph, not a wish."""
    for root, top in (("pipeline", "cli"), ("workers", "tasks")):
        layers = drawn_layers(top)
        line = {name: i for i, names in enumerate(layers) for name in names}
        children = {
            p.stem
            for p in (REPO / root).iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
        }
        assert sorted(children - line.keys()) == [], f"{root}: not drawn"
        assert sorted(line.keys() - children) == [], f"{root}: drawn, but not in the tree"
        wrong = sorted(
            f"{root}.{a} imports {root}.{b}, drawn " + ("beside" if line[a] == line[b] else "above")
            for a, b in imports_between_children(root)
            if line[a] >= line[b]
        )
        assert wrong == [], "ARCHITECTURE.md's layers are not the imports:\n" + "\n".join(wrong)


def test_the_extraction_finds_what_it_should_and_nothing_else() -> None:
    """The checks above pass vacuously if the patterns match nothing; and they must not read a
    host, a URL or a Redis key as a reference."""
    prose = Prose(
        README,
        1,
        "`pipeline.outbound.submit`, pipeline/outbound/submit.py (outbound/deliver.py), then\n"
        "`workers/tasks/sync.py::folder_sync.` and IMAP_PIPELINE_SYNC_LOCK_TTL_S; not\n"
        "imap-pipeline.example.com, https://h/docs/x, app.pipeline.x, imap-pipeline:lock:1,\n"
        "IMAP_PIPELINE_LISTENER_*, IMAP_PIPELINE_ or beat_schedule.py.",
    )
    assert list(dotted_references(prose)) == [("README.md:1", "pipeline.outbound.submit")]
    assert list(path_references(prose)) == [
        ("README.md:1", "pipeline/outbound/submit.py", None),
        ("README.md:2", "workers/tasks/sync.py", "::folder_sync"),
    ]
    assert list(relative_path_references(prose)) == [("README.md:1", "outbound/deliver.py")]
    assert [m.groups() for m in MIGRATION.finditer("migrations `0901`-`0902`, migration 0321")] == [
        ("0901", "0902"),
        ("0321", None),
    ]
    assert list(variable_references(prose)) == [("README.md:2", "IMAP_PIPELINE_SYNC_LOCK_TTL_S")]
    assert dotted_resolves("pipeline.config.Settings.load")
    assert dotted_resolves("pipeline.sync.folder")  # a task name
    assert dotted_resolves("pipeline.outbox.*")  # task names
    assert not dotted_resolves("pipeline.nothing.*")
    assert not dotted_resolves("pipeline.api.queries")
    assert not dotted_resolves("pipeline.config.Settings.no_such_field")
    assert dotted_resolves("pipeline.config.Settings.sync.batch_size")  # a section's field
    cls = Prose(README, 1, "`FolderRepository.by_role`, `FolderRepository.gone`, `Path.name`")
    assert [dotted_resolves(name) for _, name in class_attribute_references(cls)] == [True, False]
    assert not path_resolves("workers/tasks.py", None)
    init = REPO / "pipeline" / "applications" / "__init__.py"
    text = ":mod:`.tables`, :func:`~pipeline.x`, :meth:`Cursor.y`"
    roles = Prose(init, 1, text, "pipeline.applications")
    assert list(role_references(roles)) == [
        ("pipeline/applications/__init__.py:1", "pipeline.applications.tables"),
        ("pipeline/applications/__init__.py:1", "pipeline.applications?Cursor.y"),
    ]
    assert [name for _, name in dotted_references(roles)] == ["pipeline.x"]
    assert role_resolves("pipeline.applications?Cursor")  # defined in pipeline.pages
    assert role_resolves("pipeline.tls?ssl.SSLContext")
    assert not role_resolves("pipeline.pages?no_function_of_that_name")
    assert readme_table_covers("IMAP_PIPELINE_LISTENER_LEASE_TTL_S", readme_table_rows())
    assert readme_table_covers("IMAP_PIPELINE_WEBHOOK_BACKOFF_MAX_S", readme_table_rows())
    assert not readme_table_covers("IMAP_PIPELINE_NO_SUCH_THING", readme_table_rows())
