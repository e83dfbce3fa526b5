"""The curated public surface: sorted, complete, cheap to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import chatkit


def test_all_is_sorted_and_unique() -> None:
    assert list(chatkit.__all__) == sorted(chatkit.__all__)
    assert len(set(chatkit.__all__)) == len(chatkit.__all__)


def test_all_is_complete_and_every_name_resolves() -> None:
    exported = set(chatkit.__all__)
    lazily_available = set(chatkit._EXPORTS) | {"__version__"}
    assert exported == lazily_available
    for name in chatkit.__all__:
        assert getattr(chatkit, name) is not None
    assert sorted(dir(chatkit)) == sorted(chatkit.__all__)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        chatkit.no_such_name  # noqa: B018


def test_every_public_error_is_exported() -> None:
    from chatkit import _errors

    for name in _errors.__all__:
        if isinstance(getattr(_errors, name), type):
            assert name in chatkit.__all__, name


def test_import_chatkit_loads_neither_aiohttp_nor_pydantic() -> None:
    code = (
        "import sys, chatkit; print(sorted(m for m in ('aiohttp', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_providers_module_does_not_load_aiohttp() -> None:
    code = "import sys, chatkit.providers; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
