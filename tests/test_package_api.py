"""Each package lists its public names in __init__.py, and listing them costs no imports.

(A function named like its own module, models.evaluate.evaluate or search.objective.objective,
is not listed: once the module is imported, the package attribute is the module.)"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ("datasets", "models", "search")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_to_the_object_in_its_module(package):
    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        owner = importlib.import_module(f"{package}.{module._PUBLIC[name]}")
        assert getattr(module, name) is getattr(owner, name)


@pytest.mark.parametrize("package", PACKAGES)
def test_an_unknown_name_is_an_attribute_error(package):
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match="no_such_name"):
        module.__getattr__("no_such_name")


def test_importing_the_packages_and_their_errors_imports_neither_torch_nor_wandb():
    code = (
        "import sys, datasets, models, search\n"
        "from datasets.errors import DataError\n"
        "from search.errors import StudyError\n"
        "print(sorted(m for m in ('torch', 'wandb') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
