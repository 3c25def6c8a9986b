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

How they are found and resolved is ``tests/support/doc_references.py``. Docstrings are read with
:mod:`ast` (so code, string literals and comments are not prose), the Markdown and deploy files
as text. A reference is a name glued to nothing that could make it part of something else:
``imap-pipeline.example``, ``https://host/docs/x`` and ``app.pipeline`` are not references. The
failure lists every broken reference as file:line, so one pass fixes them all. Prose about the
past ("was ``api/queries.py``") names what is gone: write it in the present instead (what the
thing is now, where it lives).
"""

from __future__ import annotations

import re

import grimp
from pydantic import BaseModel

from pipeline.config import Settings, variable_names
from tests.conftest import TEST_ONLY_VARIABLES
from tests.support.doc_references import (
    ARCHITECTURE,
    MIGRATION,
    README,
    REPO,
    Prose,
    class_attribute_references,
    dotted_references,
    dotted_resolves,
    everything,
    path_references,
    path_resolves,
    relative_path_references,
    relative_path_resolves,
    role_references,
    role_resolves,
    variable_references,
)

# --- the settings -----------------------------------------------------------------------------


def deploy_knobs() -> set[str]:
    """Variables the process files expand themselves (``${IMAP_PIPELINE_X:-default}``)."""
    text = "".join((REPO / "deploy" / name).read_text() for name in ("Procfile", "compose.yaml"))
    return set(re.findall(r"\$\{(IMAP_PIPELINE_[A-Z0-9_]+)", text))


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
    known = variable_names() | deploy_knobs() | set(TEST_ONLY_VARIABLES)  # the suite's own
    broken = [
        f"{where}: {name}"
        for prose in everything()
        if prose.path != README  # tests/unit/test_config.py holds the README to the loader
        for where, name in variable_references(prose)
        if name not in known
    ]
    assert broken == [], "variables nothing reads:\n" + "\n".join(broken)


def test_every_settings_section_has_its_readme_table() -> None:
    """The README's configuration tables are grouped by section (`Settings.sync`: ...)."""
    sections = [
        name
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    ]
    assert len(sections) >= 6
    text = README.read_text()
    assert [s for s in sections if f"`Settings.{s}`" not in text] == []


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
    attributes = Prose(README, 1, "`messages/views.stored_message_views`, `folders/views.gone`")
    assert [relative_path_resolves(path) for _, path in relative_path_references(attributes)] == [
        True,
        False,
    ]
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
