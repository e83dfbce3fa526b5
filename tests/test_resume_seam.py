"""The seam of a resumed stream: what of a continuation's start is dropped (``chatkit._seam``)."""

from __future__ import annotations

import pytest

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
        ("one two", "", " two three", "one two three"),
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
        ("I like the", "", " the"),  # " theme" or " the the"?
        ("Roses are red,", "\n\n", "\n"),  # more of the whitespace may follow
    ],
)
def test_undecided_until_more_text_comes(prefill: str, trimmed: str, head: str) -> None:
    assert seam_cut(prefill, trimmed, head, max_overlap=BOUND) is None
    assert seam_cut(prefill, trimmed, head, max_overlap=BOUND, final=True) is not None


@pytest.mark.parametrize(
    ("prefill", "head"),
    [("Paris is", " t"), ("Paris is", "n"), ("The quick brown fox", " jumps")],
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
