"""Joining a resumed stream at its seam, so the caller never sees a token twice.

Pure (no I/O, stdlib only). A broken answer is continued from a *prefill*:
the text delivered so far with its trailing whitespace cut off (Anthropic
refuses a final assistant message ending in whitespace, and models continue
a word boundary more naturally than a dangling space). The model then writes
on, and may first repeat what it was given: the last few words, or the
whitespace that was cut off. ``seam_cut`` says how much of the
continuation's start to drop; ``Seam`` applies it to a stream of text
pieces, holding back the start of the continuation only as long as the
answer is undecided.

The rules, for ``prefill``, ``trimmed`` (the whitespace cut off the end of
what the caller has: ``prefill + trimmed``) and ``head`` (the continuation
so far):

1. The longest repeat is dropped: a suffix of ``prefill`` of at most
   ``max_overlap`` characters that ``head`` starts with. It must begin and
   end on word boundaries, so that a genuine continuation (``"I like the"``
   then ``" theme"``) is never cut, and it must be long enough to be told
   from text that merely goes on alike: at least ``MIN_WORDS`` words, or
   ``MIN_CHARS`` characters with a letter or digit among them. A shorter
   match is kept (``"x = [1, 2,"`` then ``" 2, 3]"`` is real text more
   often than an echo), so a model that repeats one short word shows it
   twice. The exception: the continuation starts the whole prefill over
   (after whitespace of its own, and ignoring the prefill's leading
   whitespace), which is dropped however short.
2. Then the longest common start of what is left and ``trimmed`` is
   dropped: that whitespace is on the caller's screen already.
"""

from __future__ import annotations

__all__ = ["MIN_CHARS", "MIN_WORDS", "Seam", "long_enough", "seam_cut", "split_prefill"]

MIN_WORDS = 2
MIN_CHARS = 8


def split_prefill(text: str) -> tuple[str, str]:
    """``(prefill, trimmed)``: ``text`` without its trailing whitespace, and that whitespace."""
    prefill = text.rstrip()
    return prefill, text[len(prefill) :]


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _boundary(left: str, right: str) -> bool:
    """Whether a word boundary lies between the characters ``left`` and ``right``."""
    return not (_word(left) and _word(right))


def long_enough(repeat: str) -> bool:
    """Whether ``repeat`` is long enough to be dropped as an echo (rule 1)."""
    words, inside = 0, False
    for char in repeat:
        word = _word(char)
        if word and not inside:
            words += 1
        inside = word
    if words >= MIN_WORDS:
        return True
    return len(repeat) >= MIN_CHARS and any(char.isalnum() for char in repeat)


def seam_cut(
    prefill: str, trimmed: str, head: str, *, max_overlap: int, final: bool = False
) -> int | None:
    """How many characters of ``head`` to drop, or None while more text is needed.

    ``final``: ``head`` is the whole continuation (it ended): always decide.
    """
    repeat = _repeat(prefill, head, max_overlap, final)
    if repeat is None:
        return None
    ws = repeat
    limit = min(len(trimmed), len(head) - repeat)
    while ws - repeat < limit and head[ws] == trimmed[ws - repeat]:
        ws += 1
    if ws == len(head) and ws - repeat < len(trimmed) and not final:
        return None  # whitespace so far: more of it may follow
    return ws


def _repeat(prefill: str, head: str, max_overlap: int, final: bool) -> int | None:
    """The length of the longest suffix of ``prefill`` that ``head`` repeats (rule 1).

    A repeat of the whole prefill (the model started over; with or without
    the prefill's own leading whitespace) may come after whitespace of its
    own, and needs no minimum length.
    """
    tail = prefill[-max_overlap:] if max_overlap > 0 else ""
    lead = len(prefill) - len(prefill.lstrip())
    # Longest candidate first: the first that matches is the one to drop.
    for start in range(len(tail)):
        size = len(tail) - start
        at = len(prefill) - size
        if at > 0 and not _boundary(prefill[at - 1], prefill[at]):
            continue
        candidate = tail[start:]
        whole = at <= lead
        if not whole and not long_enough(candidate):
            break  # every shorter suffix is shorter still
        pad = len(head) - len(head.lstrip()) if whole else 0
        body = head[pad:]
        if len(body) < size:
            if not final and candidate.startswith(body):
                return None  # the continuation may yet repeat all of it
            continue
        if not body.startswith(candidate):
            continue
        if size < len(body):
            if _boundary(body[size - 1], body[size]):
                return pad + size
            continue
        # The repeat is the whole head: is the next character still in the word?
        if final or not _word(body[-1]):
            return pad + size
        return None
    return 0


class Seam:
    """Applies ``seam_cut`` to a continuation arriving in pieces.

    ``feed(piece)`` returns the text to hand on ("" while holding back);
    ``finish()`` returns what is still held when the continuation ends.
    ``dropped`` is how many characters were removed once decided.
    """

    def __init__(self, prefill: str, trimmed: str, *, max_overlap: int) -> None:
        self._prefill = prefill
        self._trimmed = trimmed
        self._max_overlap = max_overlap
        self._held = ""
        self.decided = False
        self.dropped = 0

    def feed(self, piece: str) -> str:
        if self.decided:
            return piece
        self._held += piece
        return self._decide(final=False)

    def finish(self) -> str:
        if self.decided:
            return ""
        return self._decide(final=True)

    def _decide(self, *, final: bool) -> str:
        cut = seam_cut(
            self._prefill, self._trimmed, self._held, max_overlap=self._max_overlap, final=final
        )
        if cut is None:
            return ""
        self.decided = True
        self.dropped = cut
        text, self._held = self._held[cut:], ""
        return text
