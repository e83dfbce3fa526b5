"""The seam of a resumed stream: what of a continuation's start is dropped (``chatkit._seam``)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chatkit._seam import Seam, seam_cut, split_prefill

BOUND = 200


def joined(prefill: str, trimmed: str, continuation: str, *, max_overlap: int = BOUND) -> str:
    """What the caller ends up with: the text it had, then the continuation as cut."""
    cut = seam_cut(prefill, trimmed, continuation, max_overlap=max_overlap, final=True)
    assert cut is not None
    return prefill + trimmed + continuation[cut:]


def test_split_prefill_cuts_trailing_whitespace_only() -> None:
    assert split_prefill("Roses are red,\n\n") == ("Roses are red,", "\n\n")
    assert split_prefill("  lead and tail ") == ("  lead and tail", " ")
    assert split_prefill("no tail") == ("no tail", "")
    assert split_prefill(" \n") == ("", " \n")


@pytest.mark.parametrize(
    ("prefill", "trimmed", "continuation", "expected"),
    [
        # A clean continuation is kept whole.
        ("Paris is", "", " the capital.", "Paris is the capital."),
        # A word cut in half goes on from where it stopped.
        ("Paris i", "", "s the capital.", "Paris is the capital."),
        # The whitespace the prefill left out is on the caller's screen already.
        ("Paris is", " ", " the capital.", "Paris is the capital."),
        ("Roses are red,", "\n\n", "\n\nViolets", "Roses are red,\n\nViolets"),
        ("Roses are red,", "\n\n", "\nViolets", "Roses are red,\n\nViolets"),
        ("Roses are red,", "\n", "\n\nViolets", "Roses are red,\n\nViolets"),
        # The model repeats the last words of the prefill: dropped.
        ("The quick brown fox", "", " brown fox jumps", "The quick brown fox jumps"),
        ("The quick brown fox", " ", " brown fox jumps", "The quick brown fox jumps"),
        ("The quick brown fox", " ", "brown fox jumps", "The quick brown fox jumps"),
        ("The quick brown fox", "", " The quick brown fox jumps", "The quick brown fox jumps"),
        ("Hello.", "", " Hello. Again", "Hello. Again"),
        # Not a repeat: a new word that starts like the last one.
        ("I like the", "", " theme park", "I like the theme park"),
        ("I like the", " ", "theme park", "I like the theme park"),
        # Not on a word boundary in the prefill: "s" of "is" is not a repeat.
        ("Paris is", "", "s is", "Paris iss is"),
        # Whitespace alone is never taken for a repeat of the text.
        ("one two three", "", " two three four", "one two three four"),
        # Too short to tell from real text: kept (one word under 8 characters).
        ("x = [1, 2,", "", " 2, 3]", "x = [1, 2, 2, 3]"),
        ("one two", "", " two three", "one two two three"),
        ("one two", " ", "two three", "one two two three"),
        # Long enough: one word of 8 characters or more, or two words.
        ("It is wonderful", "", " wonderful indeed", "It is wonderful indeed"),
        ("x = [1, 2,", "", " [1, 2, 3]", "x = [1, 2, 3]"),
        # The whole prefill started over is dropped however short, also
        # without the prefill's own leading whitespace.
        ("Hi", "", " Hi there", "Hi there"),
        ("  Hello there", "", "Hello there, friend", "  Hello there, friend"),
        ("\nHi", "", " Hi you", "\nHi you"),
    ],
)
def test_seam_cut(prefill: str, trimmed: str, continuation: str, expected: str) -> None:
    assert joined(prefill, trimmed, continuation) == expected


def test_a_repeat_longer_than_the_bound_is_kept() -> None:
    prefill = "alpha beta gamma delta"
    continuation = " beta gamma delta epsilon"
    assert joined(prefill, "", continuation, max_overlap=len(" beta gamma delta")) == (
        "alpha beta gamma delta epsilon"
    )
    assert joined(prefill, "", continuation, max_overlap=len("gamma delta")) == (
        "alpha beta gamma delta beta gamma delta epsilon"
    )
    assert joined(prefill, "", continuation, max_overlap=0) == prefill + continuation


@pytest.mark.parametrize(
    ("prefill", "trimmed", "head"),
    [
        ("The quick brown fox", "", " brown"),  # may be repeating " brown fox"
        ("The quick brown fox", "", " brown fox"),  # " brown foxes" is not a repeat
        ("Roses are red,", "\n\n", "\n"),  # more of the whitespace may follow
    ],
)
def test_undecided_until_more_text_comes(prefill: str, trimmed: str, head: str) -> None:
    assert seam_cut(prefill, trimmed, head, max_overlap=BOUND) is None
    assert seam_cut(prefill, trimmed, head, max_overlap=BOUND, final=True) is not None


@pytest.mark.parametrize(
    ("prefill", "head"),
    [
        ("Paris is", " t"),
        ("Paris is", "n"),
        ("The quick brown fox", " jumps"),
        ("I like the", " the"),  # one short word is never dropped: nothing to wait for
    ],
)
def test_decided_at_once_when_no_repeat_is_possible(prefill: str, head: str) -> None:
    assert seam_cut(prefill, "", head, max_overlap=BOUND) == 0


CASES = [
    ("The quick brown fox", " ", " brown fox jumps over the lazy dog."),
    ("I like the", "", " theme park and the zoo."),
    ("Roses are red,", "\n\n", "\n\nViolets are blue."),
    ("Paris is", " ", "Paris is the capital of France."),
    ("one", "", " one one two"),
]


@pytest.mark.parametrize(("prefill", "trimmed", "continuation"), CASES)
def test_the_seam_gives_the_same_text_at_every_split(
    prefill: str, trimmed: str, continuation: str
) -> None:
    whole = joined(prefill, trimmed, continuation)
    for size in range(1, len(continuation) + 1):
        pieces = [continuation[i : i + size] for i in range(0, len(continuation), size)]
        seam = Seam(prefill, trimmed, max_overlap=BOUND)
        out = "".join(seam.feed(piece) for piece in pieces) + seam.finish()
        assert prefill + trimmed + out == whole, (size, pieces)
        assert seam.decided


def test_the_seam_holds_back_only_what_may_be_a_repeat() -> None:
    seam = Seam("The quick brown fox", "", max_overlap=BOUND)
    assert seam.feed(" brown") == ""
    assert seam.feed(" fox") == ""
    assert seam.feed(" jumps") == " jumps"
    assert seam.dropped == len(" brown fox")
    assert seam.feed(" over") == " over"
    assert seam.finish() == ""

    plain = Seam("Paris is", " ", max_overlap=BOUND)
    assert plain.feed(" the") == "the"
    assert plain.dropped == 1


def test_a_continuation_that_only_repeats_ends_with_nothing_new() -> None:
    seam = Seam("The quick brown fox", " ", max_overlap=BOUND)
    assert seam.feed(" brown fox") == ""
    assert seam.finish() == ""
    assert seam.dropped == len(" brown fox")


def test_whitespace_waits_for_more_beyond_the_bound() -> None:
    # The prefill is longer than the bound: no repeat of it all is possible,
    # but the whitespace that was cut off may still come in full.
    assert seam_cut("Roses are red,", "\n\n", "\n", max_overlap=4) is None
    assert seam_cut("Roses are red,", "\n\n", "\n\n", max_overlap=4) == 2
    assert seam_cut("Roses are red,", "\n\n", "\nV", max_overlap=4) == 1


# -- fuzzed: real text is never cut, an echo of the minimum is always removed --------

WORDS = ["the", "cat", "x", "=", "[1,", "2,", "3]", "Hello.", "don't", "naïve", "42", "(a)", "_id"]
SEPARATORS = [" ", " ", " ", "  ", "\n", "\n\n", " \t"]
_WORD_RUN = re.compile(r"\w+")


def _reference_long_enough(repeat: str) -> bool:
    """The minimum, stated apart from the module: 2 words, or 8 characters with a
    letter or digit."""
    words = len(_WORD_RUN.findall(repeat))
    return words >= 2 or (len(repeat) >= 8 and any(c.isalnum() for c in repeat))


texts = st.lists(
    st.tuples(st.sampled_from(SEPARATORS), st.sampled_from(WORDS)), min_size=1, max_size=14
).map(lambda pairs: "".join(sep + word for sep, word in pairs))


def _streamed(prefill: str, trimmed: str, continuation: str, sizes: list[int]) -> str:
    """The continuation through a ``Seam`` in pieces of ``sizes`` (cycled)."""
    seam = Seam(prefill, trimmed, max_overlap=BOUND)
    out, at, i = [], 0, 0
    while at < len(continuation):
        size = sizes[i % len(sizes)]
        out.append(seam.feed(continuation[at : at + size]))
        at, i = at + size, i + 1
    out.append(seam.finish())
    return "".join(out)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(texts, st.data(), st.lists(st.integers(1, 7), min_size=1, max_size=4))
def test_fuzz_a_continuation_that_repeats_nothing_is_joined_exactly(
    text: str, data: st.DataObject, sizes: list[int]
) -> None:
    cut = data.draw(st.integers(1, len(text) - 1)) if len(text) > 1 else 1
    prefill, trimmed = split_prefill(text[:cut])
    assume(prefill)
    # The model writes what follows the prefill: the whitespace cut off, then the rest.
    continuation = text[len(prefill) :]
    body = continuation.lstrip()
    # It repeats nothing: no suffix of the prefill long enough to count as an
    # echo starts it, nor does the whole prefill.
    assume(not body.startswith(prefill.lstrip()))
    assume(
        not any(
            _reference_long_enough(prefill[at:]) and continuation.startswith(prefill[at:])
            for at in range(1, len(prefill))
        )
    )
    assert joined(prefill, trimmed, continuation) == text
    assert prefill + trimmed + _streamed(prefill, trimmed, continuation, sizes) == text


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(texts, st.data(), st.lists(st.integers(1, 7), min_size=1, max_size=4))
def test_fuzz_an_echo_of_at_least_the_minimum_is_removed(
    text: str, data: st.DataObject, sizes: list[int]
) -> None:
    # Cut where a word ends (the model continues after a whole word).
    ends = [m.end() for m in re.finditer(r"\S+", text)][:-1]
    assume(ends)
    cut = data.draw(st.sampled_from(ends))
    prefill, trimmed = split_prefill(text[:cut])
    rest = text[len(prefill) :]
    # The echo: the prefill's last pieces (whitespace + word), as models repeat them.
    pieces = re.findall(r"\s*\S+", prefill)
    count = data.draw(st.integers(1, len(pieces)))
    echo = "".join(pieces[-count:])
    whole = echo.strip() == prefill.strip()
    assume(whole or _reference_long_enough(echo))
    continuation = echo + rest
    # Unambiguous: no longer suffix of the prefill is repeated as well.
    assume(
        not any(
            continuation.startswith(prefill[at:])
            for at in range(0, len(prefill) - len(echo))
            if not prefill[at:].isspace()
        )
    )
    assume(whole or not continuation.lstrip().startswith(prefill.lstrip()) or echo == prefill)
    assert joined(prefill, trimmed, continuation) == text
    assert prefill + trimmed + _streamed(prefill, trimmed, continuation, sizes) == text
