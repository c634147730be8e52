"""The package's layers: every module imports cleanly, and imports point one way (a higher layer
imports lower ones, never back). The loss library stays light: `import prefopt.losses` needs torch
only."""

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import prefopt

PACKAGE = Path(prefopt.__file__).parent
# a package may import packages of a lower layer (and itself), never one of its own layer or above
LAYERS = {
    "errors": 0,
    "registry": 0,
    "files": 0,
    "processes": 0,
    "settings": 1,
    "figures": 1,
    "losses": 2,
    "data": 2,
    "acquire": 2,
    "engine": 3,
    "label": 3,
    "oracles": 4,
    "train": 4,
    "generate": 4,
    "evaluate": 5,
    "reward": 6,
    "loop": 7,
    "tune": 7,
    "rl": 7,
    "demo": 8,
    "report": 9,
    "cli": 10,
}
MODEL_LIBRARIES = {"transformers", "peft", "accelerate"}


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
            ".__init__"
        ): path
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts
    }


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to (`prefopt.engine.model` -> `engine`)."""
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(prefopt.__path__, prefix="prefopt.")]
    assert {
        "prefopt.losses.pairwise",
        "prefopt.train.loop",
        "prefopt.label.app",
        "prefopt.engine.logps",
    } <= set(names)
    for name in names:
        importlib.import_module(name)


def test_every_part_of_the_package_has_a_layer():
    assert {_part(module) for module in _modules()} - {""} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_point_down(module):
    part = _part(module)
    for imported in _imports(_modules()[module]):
        if not imported.startswith("prefopt.") or _part(imported) == part:
            continue
        assert _part(imported) != "cli", (
            f"{module} imports {imported}: nothing imports the command line"
        )
        assert LAYERS[_part(imported)] < LAYERS[part], f"{module} (layer {part}) imports {imported}"


@pytest.mark.parametrize("part", ["losses", "data", "label", "acquire"])
def test_losses_data_and_label_import_no_model_code(part):
    for module, path in _modules().items():
        if _part(module) == part:
            heavy = {name.split(".")[0] for name in _imports(path)} & MODEL_LIBRARIES
            assert not heavy, f"{module} imports {heavy}"


@pytest.mark.parametrize("part", ["losses", "acquire"])
def test_pure_parts_import_torch_only(part):
    allowed = {"torch", "prefopt"} | set(sys.stdlib_module_names)
    for module, path in _modules().items():
        if _part(module) == part:
            outside = {name.split(".")[0] for name in _imports(path)} - allowed
            assert not outside, f"{module} imports {outside}"
    code = (
        f"import sys, prefopt.{part}; heavy = [m for m in ('transformers', 'peft', 'accelerate', 'datasets') "
        "if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("setting", "imports", "seen"),
    [
        # before torch: PyTorch's allocator reads it at its first allocation
        (None, "import prefopt, torch", "1"),
        ("0", "import prefopt, torch", "0"),  # a value the user set is kept
        (None, "import torch, prefopt", "None"),  # too late to matter: left unset
    ],
)
def test_importing_prefopt_first_turns_on_pytorchs_huge_pages(setting, imports, seen):
    env = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    if setting is not None:
        env["THP_MEM_ALLOC_ENABLE"] = setting
    code = f"{imports}; import os; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == seen


def test_no_two_modules_import_each_other():
    modules = _modules()
    imports = {
        module: {name for name in _imports(path) if name in modules}
        for module, path in modules.items()
    }
    pairs = sorted(
        (a, b) for a, names in imports.items() for b in names if a < b and a in imports.get(b, ())
    )
    assert not pairs, f"modules that import each other: {pairs}"
