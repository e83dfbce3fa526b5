"""The curated public surface: one list, cheap to import, named ``chatkit.X``."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import pydantic
import pytest

import chatkit
from chatkit import _errors


def test_all_is_sorted_and_unique() -> None:
    assert list(chatkit.__all__) == sorted(chatkit.__all__)
    assert len(set(chatkit.__all__)) == len(chatkit.__all__)


def test_all_is_the_import_block_and_every_name_resolves() -> None:
    assert set(chatkit.__all__) == set(chatkit._EXPORTS) | {"__version__"}
    for name in chatkit.__all__:
        assert getattr(chatkit, name) is not None
    assert sorted(dir(chatkit)) == sorted(chatkit.__all__)


def test_without_its_source_the_package_imports_everything_at_once() -> None:
    # A sourceless install (only .pyc files): the import block runs as written.
    source = Path(chatkit.__file__).read_text(encoding="utf-8")
    eager = types.ModuleType("chatkit_eager")
    eager.__file__ = "/nonexistent/chatkit/__init__.py"
    exec(compile(source, eager.__file__, "exec"), eager.__dict__)
    assert eager.__all__ == chatkit.__all__
    assert eager._EXPORTS == {}
    assert eager.Client is chatkit.Client and eager.RateLimitError is chatkit.RateLimitError


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        chatkit.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_every_public_error_is_exported() -> None:
    for name in _errors.__all__:
        if isinstance(getattr(_errors, name), type):
            assert name in chatkit.__all__, name


def test_public_errors_are_named_chatkit_from_the_moment_they_exist() -> None:
    # In a fresh process, importing the private modules directly (never
    # through chatkit.X): the exported errors already say chatkit.X (for
    # tracebacks), and nothing else claims to be chatkit's.
    modules = sorted(set(chatkit._EXPORTS.values()))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import chatkit\n"
        "claimed = {n for m in list(sys.modules) if m.startswith('chatkit')\n"
        "           for n, v in vars(sys.modules[m]).items()\n"
        "           if isinstance(v, type) and v.__module__ == 'chatkit'}\n"
        "public = {n for n in chatkit._EXPORTS if n in vars(chatkit) or\n"
        "          isinstance(vars(sys.modules[chatkit._EXPORTS[n]])[n], type)}\n"
        "print(sorted(claimed)); print(sorted(public))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    claimed, public = out.stdout.splitlines()
    errors = sorted(
        name for name in eval(public) if issubclass(getattr(chatkit, name), BaseException)
    )
    assert eval(claimed) == errors
    assert "RateLimitError" in errors and "Client" not in errors


def test_every_public_class_has_resolvable_type_hints() -> None:
    for name in chatkit.__all__:
        value = getattr(chatkit, name)
        if isinstance(value, type):
            typing.get_type_hints(value)  # raises NameError on an unresolvable name


def test_a_sourceless_install_imports(tmp_path: Path) -> None:
    # Only .pyc files, as compileall -b leaves them: the loader has no source,
    # and the package imports everything at once instead of lazily.
    package = tmp_path / "chatkit"
    shutil.copytree(Path(chatkit.__file__).parent, package)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-b", str(package)], check=True)
    for source in package.rglob("*.py"):
        source.unlink()
    code = "import chatkit\nprint(len(chatkit.__all__), chatkit.Client.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert out.stdout.split() == [str(len(chatkit.__all__)), "Client"]


def test_a_traceback_names_the_public_error() -> None:
    code = "import chatkit._errors as e\nraise e.error_from_status(429, b'{}', provider='p')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stderr.splitlines()[-1].startswith("chatkit.RateLimitError: ")


def test_errors_pickle_copy_and_repr_with_every_field() -> None:
    status = _errors.error_from_status(
        429, b'{"error": {"code": "slow_down"}}', headers={"x-request-id": "req-1"}, provider="P"
    )
    status.attempts = [chatkit.Attempt(provider="P", number=1, error=chatkit.APITimeoutError("t"))]
    interrupted = chatkit.StreamInterrupted("cut", partial_text="Hel", provider="P")
    plain = chatkit.APITimeoutError("slow")
    for error in (status, interrupted, plain, chatkit.InvalidRequestError("x", field="model")):
        for clone in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
            assert type(clone) is type(error)
            assert clone.args == error.args and str(clone) == str(error)
            assert repr(vars(clone)) == repr(vars(error))
    assert repr(plain) == "APITimeoutError('slow')"
    assert pickle.loads(pickle.dumps(status)).request_id == "req-1"
    assert b"chatkit\nRateLimitError" in pickle.dumps(status, protocol=0)


def test_public_models_are_complete_and_pickle() -> None:
    for name in chatkit.__all__:
        value = getattr(chatkit, name)
        if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
            assert value.__pydantic_complete__, name
    completion = chatkit.ChatCompletion.model_validate(
        {"id": "c", "created": 1, "model": "m", "choices": [], "object": "chat.completion"}
    )
    assert pickle.loads(pickle.dumps(completion)) == completion
    assert repr(completion).startswith("ChatCompletion(")


def test_openai_params_is_read_only() -> None:
    with pytest.raises(TypeError):
        chatkit.OPENAI_PARAMS["made_up"] = (str,)  # type: ignore[index]
    assert "temperature" in chatkit.OPENAI_PARAMS


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
