"""The public faces ``probe`` and ``editing``: every advertised name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import editing
import probe


@pytest.mark.parametrize("package", [probe, editing], ids=["probe", "editing"])
def test_every_public_name_resolves_to_its_module(package):
    for name in package.__all__:
        value = getattr(package, name)
        assert value is getattr(__import__(package._PUBLIC[name], fromlist=[name]), name)
    assert sorted(package.__all__) == sorted(package._PUBLIC)


@pytest.mark.parametrize("package", ["probe", "editing"])
def test_unknown_name_is_an_attribute_error(package):
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = __import__(package).no_such_thing


def test_importing_the_faces_loads_no_torch():
    code = "import sys, probe, editing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_public_name_is_shadowed_by_a_submodule():
    import pkgutil

    for package in (probe, editing):
        submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        assert not submodules & set(package.__all__), package.__name__
