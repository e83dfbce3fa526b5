"""Public classes carry the module users import them from."""

from __future__ import annotations

__all__ = ["public"]


def public(*classes: type) -> None:
    """Make ``classes`` say they are ``chatkit.X``, as users import them.

    Used for the errors only: tracebacks then name ``chatkit.RateLimitError``
    rather than a private module, and pickled errors survive internal moves.
    Not for other classes: ``typing.get_type_hints`` and ``inspect`` resolve a
    class's names in ``sys.modules[__module__]``, and chatkit's namespace is
    lazy (errors have no class-level annotations, so their hints resolve).
    Set after the class is built, never in its body: pydantic and
    ``typing.get_type_hints`` resolve annotations in ``sys.modules[__module__]``.
    Only for names ``chatkit/__init__.py`` exports (tests/test_public_api.py
    checks both directions).
    """
    for cls in classes:
        cls.__module__ = "chatkit"
