"""Every module imports (ruff finds undefined names; this finds broken imports), and the loss
library stays light: `import prefopt.losses` needs torch only."""

import importlib
import pkgutil
import subprocess
import sys

import prefopt


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(prefopt.__path__, prefix="prefopt.")]
    assert "prefopt.losses.pairwise" in names and "prefopt.train" in names
    for name in names:
        importlib.import_module(name)


def test_losses_import_with_torch_only():
    code = ("import sys, prefopt.losses; heavy = [m for m in ('transformers', 'peft', 'accelerate', 'datasets') "
            "if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
