"""Architecture rules for the graphprune package, checked statically on its source tree.

The package is laid out as a pipeline (load, analyse, run, calibrate, plan, inspect, then the
entry points), and these tests keep it that way as it grows. Every module under ``graphprune/``
is parsed with ``ast``; graphprune itself is never imported, so a module that fails to import
cannot hide a problem. Four rules are checked:

* ``test_no_import_cycles``: no two graphprune modules import each other, directly or through
  others, and no module imports itself. Imports inside functions and ``if TYPE_CHECKING:``
  blocks count too: a cycle that is only broken by deferring an import is still a cycle.
  ``from PKG import NAME`` reads PKG's ``__init__`` (the package's face) even when NAME is a
  submodule, so it imports PKG too; so does ``import PKG.MOD``, which binds PKG.
* ``test_faces_are_not_imported_from_inside``: a package's ``__init__`` re-exports for users;
  no module inside the package imports it (``__main__``, the face's script, excepted).
* ``test_layers``: each module imports only from its own layer or lower ones (see ``LAYERS``).
* ``test_module_size``: no module is longer than ``MAX_LINES`` lines unless ``EXCEPTIONS`` says
  why it may be.

The checkers take the package directory as an argument, so the last tests run them on small fake
packages and show that they do fail when a rule is broken.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "graphprune"

# Layers of the package, lowest first. The tree reads as the pipeline: errors shared by all,
# then model I/O, graph analysis and rewriting (core), running models (runtime), calibration
# (posttrain), pruning plans (planning), recovery by distillation (recovery), reports and diffs
# (inspect), the programmatic entry points, the command line, and the package's own
# __init__/__main__ on top. A stage depends only on earlier stages, so a module may import
# from its own layer or lower ones, never higher.
# Names in one tuple share a layer. Each name is a top-level module or subpackage of graphprune.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "version"),
    ("io",),
    ("core",),
    ("runtime",),
    ("posttrain",),
    ("planning",),
    ("recovery",),
    ("inspect",),
    ("api",),
    ("pipeline",),
    ("torch",),  # graphprune.torch: plans handed back to PyTorch; nothing imports it
    ("cli",),
    ("__init__", "__main__"),
]

MAX_LINES = 500

# Modules allowed past MAX_LINES: path relative to the repository root -> why it may be.
EXCEPTIONS: dict[str, str] = {}

# An import graph: module name -> {imported module name: line of the first such import}.
Graph = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Module:
    name: str  # dotted name, e.g. "graphprune.core.graph"; a package's __init__ is the package
    path: Path
    is_package: bool  # the module is a package's __init__.py


def find_modules(root: Path) -> dict[str, Module]:
    """All modules of the package in directory ``root``, by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path, is_package)
    return modules


def absolute_base(node: ast.ImportFrom, module: Module) -> str | None:
    """The absolute name after ``from`` in ``node``; None if it climbs above the top package."""
    if node.level == 0:
        return node.module
    package = module.name.split(".")
    if not module.is_package:
        package = package[:-1]
    keep = len(package) - (node.level - 1)
    if keep <= 0:
        return None
    parts = package[:keep] + (node.module.split(".") if node.module else [])
    return ".".join(parts)


def import_targets(node: ast.AST, module: Module, modules: Mapping[str, Module]) -> list[str]:
    """The package's modules that the import statement ``node`` imports.

    ``from PKG import NAME`` imports the module PKG.NAME when there is one, and PKG itself (its
    ``__init__`` when PKG is a package: Python looks NAME up there first), except in PKG's own
    ``__init__``. ``import A.B`` imports A.B and, binding the name A, the package A too;
    ``import A.B as C`` only A.B. Names outside the package are left out.
    """
    if isinstance(node, ast.Import):
        targets = []
        for alias in node.names:
            bound = alias.name if alias.asname else alias.name.split(".")[0]
            targets += [name for name in {alias.name, bound} if name in modules]
        return sorted(targets)
    if not isinstance(node, ast.ImportFrom):
        return []
    base = absolute_base(node, module)
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in modules:
            targets.append(submodule)
    own_face = module.is_package and base == module.name  # an __init__ importing its modules
    if base in modules and not own_face and (modules[base].is_package or not targets):
        targets.append(base)
    return targets


def imports_of(module: Module, modules: Mapping[str, Module]) -> dict[str, int]:
    """Modules of the package imported anywhere in ``module``, with the first line doing so."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        for target in import_targets(node, module, modules):
            found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def import_graph(modules: Mapping[str, Module]) -> Graph:
    return {name: imports_of(module, modules) for name, module in modules.items()}


def import_cycles(root: Path) -> list[list[str]]:
    """Sets of modules of the package in ``root`` that import each other, or a module itself."""
    imports = import_graph(find_modules(root))
    graph = nx.DiGraph()
    graph.add_nodes_from(imports)
    graph.add_edges_from(
        (source, target) for source, targets in imports.items() for target in targets
    )
    cycles = [
        sorted(component)
        for component in nx.strongly_connected_components(graph)
        if len(component) > 1 or graph.has_edge(*component, *component)
    ]
    return sorted(cycles)


def describe_cycle(cycle: list[str], root: Path) -> str:
    """The imports that make up ``cycle``, one per line, with file and line."""
    modules = find_modules(root)
    graph = import_graph(modules)
    lines = [f"cycle between {', '.join(cycle)}:"]
    for source in cycle:
        path = modules[source].path.relative_to(root.parent).as_posix()
        for target, line in sorted(graph[source].items()):
            if target in cycle:
                lines.append(f"    {path}:{line}: {source} imports {target}")
    return "\n".join(lines)


def faces_imported_from_inside(root: Path) -> list[str]:
    """``path:line: MODULE imports its package's face PKG`` for each import of a package's
    ``__init__`` by a module inside that package (its ``__main__`` excepted)."""
    modules = find_modules(root)
    found = []
    for source, targets in sorted(import_graph(modules).items()):
        if source.rsplit(".", 1)[-1] == "__main__":
            continue
        path = modules[source].path.relative_to(root.parent).as_posix()
        for target, line in sorted(targets.items()):
            if modules[target].is_package and source.startswith(target + "."):
                found.append(f"{path}:{line}: {source} imports its package's face {target}")
    return found


def layer_of(module_name: str) -> str:
    """The top-level module or subpackage a module belongs to; ``__init__`` for the package."""
    parts = module_name.split(".")[1:]
    return parts[0] if parts else "__init__"


def iter_layer_problems(root: Path, layers: list[tuple[str, ...]]) -> Iterator[str]:
    """Modules outside ``layers``, and imports from a lower layer into a higher one."""
    rank = {name: position for position, group in enumerate(layers) for name in group}
    modules = find_modules(root)
    for name in sorted({layer_of(module) for module in modules} - rank.keys()):
        yield f"{root.name}.{name} is in no layer: place it in LAYERS in {Path(__file__).name}"
    for source, targets in sorted(import_graph(modules).items()):
        path = modules[source].path.relative_to(root.parent).as_posix()
        for target, line in sorted(targets.items()):
            source_layer, target_layer = layer_of(source), layer_of(target)
            if rank.get(target_layer, -1) > rank.get(source_layer, len(layers)):
                yield (
                    f"{path}:{line}: {source} (layer {source_layer!r}) imports {target} "
                    f"(higher layer {target_layer!r})"
                )


def oversized_modules(root: Path, max_lines: int, exceptions: Mapping[str, str]) -> list[str]:
    """``path: N lines`` for each module over ``max_lines`` not listed in ``exceptions``."""
    oversized = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).as_posix()
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > max_lines and relative not in exceptions:
            oversized.append(f"{relative}: {count} lines")
    return oversized


# The real package.


def test_no_import_cycles() -> None:
    cycles = import_cycles(PACKAGE)
    assert not cycles, "import cycles in graphprune:\n" + "\n".join(
        describe_cycle(cycle, PACKAGE) for cycle in cycles
    )


def test_faces_are_not_imported_from_inside() -> None:
    found = faces_imported_from_inside(PACKAGE)
    assert not found, (
        "import the module that defines the name, not the package's __init__:\n" + "\n".join(found)
    )


def test_layers() -> None:
    problems = list(iter_layer_problems(PACKAGE, LAYERS))
    assert not problems, "layering broken (see LAYERS):\n" + "\n".join(problems)


def test_module_size() -> None:
    oversized = oversized_modules(PACKAGE, MAX_LINES, EXCEPTIONS)
    assert not oversized, (
        f"modules over {MAX_LINES} lines (split them, or list them in EXCEPTIONS with a reason):\n"
        + "\n".join(oversized)
    )


# The checkers themselves, on fake packages.


def write_package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (path inside the package -> source) as package ``fake``; return its dir."""
    root = tmp_path / "fake"
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .a import f\n"},
            [["fake.a", "fake.b"]],
            id="two-modules-import-each-other",
        ),
        pytest.param(
            {
                "__init__.py": "from .c import helper\nVERSION = '1'\n",
                "c.py": "from . import VERSION\n",
            },
            [["fake", "fake.c"]],
            id="from-dot-import-name-goes-through-init",
        ),
        pytest.param(
            {"a.py": "def f():\n    from .b import g\n", "b.py": "import fake.a\n"},
            [["fake.a", "fake.b"]],
            id="function-level-import",
        ),
        pytest.param(
            {
                "a.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n"
                    "    from fake.b import B\n"
                ),
                "b.py": "from .a import A\n",
            },
            [["fake.a", "fake.b"]],
            id="type-checking-import",
        ),
        pytest.param(
            {
                "sub/__init__.py": "",
                "sub/x.py": "from ..y import f\n",
                "y.py": "from .sub.x import g\n",
            },
            [["fake.sub.x", "fake.y"]],
            id="across-subpackages",
        ),
        pytest.param({"a.py": "import fake.a\n"}, [["fake.a"]], id="module-imports-itself"),
        pytest.param(
            {"__init__.py": "from .a import f\n", "a.py": "from . import b\n", "b.py": ""},
            [["fake", "fake.a"]],
            id="from-dot-import-submodule-reads-the-init",
        ),
        pytest.param(
            {
                "__init__.py": "from .sub.x import f\n",
                "sub/__init__.py": "",
                "sub/x.py": "def f():\n    from .. import y\n",
                "y.py": "",
            },
            [["fake", "fake.sub.x"]],
            id="lazy-import-of-the-top-package",
        ),
        pytest.param(
            {"__init__.py": "from .a import f\n", "a.py": "import fake.b\n", "b.py": ""},
            [["fake", "fake.a"]],
            id="import-dotted-binds-the-package",
        ),
    ],
)
def test_cycle_detection_finds_a_cycle(
    tmp_path: Path, files: dict[str, str], expected: list[list[str]]
) -> None:
    root = write_package(tmp_path, files)
    cycles = import_cycles(root)
    assert cycles == expected
    assert all(describe_cycle(cycle, root).count(" imports ") >= 1 for cycle in cycles)


def test_cycle_detection_accepts_an_init_importing_its_submodules(tmp_path: Path) -> None:
    root = write_package(
        tmp_path,
        {
            "__init__.py": "from . import a, b\nfrom .a import f\n",
            "a.py": "from .b import g\nimport fake.b as b\n",
            "b.py": "import os\n",
            "sub/__init__.py": "from .x import h\n",
            "sub/x.py": "from ..a import f\nfrom .y import z\n",
            "sub/y.py": "",
            "sub/__main__.py": "from . import h\n",
        },
    )
    assert import_cycles(root) == []
    assert faces_imported_from_inside(root) == []


def test_face_check_finds_a_package_imported_from_inside(tmp_path: Path) -> None:
    root = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "def f():\n    from . import b\n",
            "b.py": "",
            "sub/__init__.py": "",
            "sub/x.py": "from .. import b\n",
        },
    )
    assert faces_imported_from_inside(root) == [
        "fake/a.py:2: fake.a imports its package's face fake",
        "fake/sub/x.py:1: fake.sub.x imports its package's face fake",
    ]


def test_layer_check_finds_upward_imports_and_unplaced_modules(tmp_path: Path) -> None:
    root = write_package(
        tmp_path,
        {
            "__init__.py": "from .high import h\n",
            "low/x.py": "from ..high import h\n",
            "high.py": "from .low.x import f\n",
            "stray.py": "",
        },
    )
    problems = list(iter_layer_problems(root, [("low",), ("high",), ("__init__",)]))
    assert len(problems) == 2
    assert "fake.stray is in no layer" in problems[0]
    assert "fake/low/x.py:1: fake.low.x (layer 'low') imports fake.high" in problems[1]


def test_size_check_lists_long_modules(tmp_path: Path) -> None:
    root = write_package(tmp_path, {"long.py": "x = 1\n" * 6, "short.py": "x = 1\n"})
    assert oversized_modules(root, 5, {}) == ["fake/long.py: 6 lines"]
    assert oversized_modules(root, 5, {"fake/long.py": "generated table"}) == []
