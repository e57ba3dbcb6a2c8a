"""The docstring examples of every module run (``python -m doctest`` semantics; examples needing a recipe are
marked ``+SKIP``)."""

import doctest
import importlib
import pkgutil

import pytest

import composer_imp

MODULES = sorted(m.name for m in pkgutil.walk_packages(composer_imp.__path__, 'composer_imp.'))


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f'{result.failed} failing example(s) in {name}'


def test_every_public_module_has_a_docstring():
    missing = [name for name in MODULES if not (importlib.import_module(name).__doc__ or '').strip()]
    assert not missing, missing
