"""The reasoning splitter on R1-style streams, cut at every possible place."""

import itertools
import random

import pytest

from ktappliance.api.reasoning import ReasoningSplitter, split_text

# R1-style outputs: with --force_think (opening tag first), with a chat
# template that opened the block in the prompt (no opening tag), and plain
# answers with no reasoning at all.
FORCED = "<think>\nOkay, the user says hello. I should greet back.\n</think>\n\nHello! How can I help?"
TEMPLATE_OPENED = "Okay, 2 + 2 is 4.\n</think>\n\nThe answer is **4**."
NO_REASONING = "Hello! I can help with < and > signs, even <thin things."
UNFINISHED = "<think>\nLet me think about this for a very long"


def run(chunks, opened=False):
    splitter = ReasoningSplitter(opened)
    reasoning = content = ""
    for chunk in chunks:
        piece = splitter.feed(chunk)
        reasoning += piece.reasoning
        content += piece.content
    piece = splitter.finish()
    return reasoning + piece.reasoning, content + piece.content


EXPECTED = {
    FORCED: ("Okay, the user says hello. I should greet back.\n", "Hello! How can I help?"),
    TEMPLATE_OPENED: ("Okay, 2 + 2 is 4.\n", "The answer is **4**."),
    NO_REASONING: ("", NO_REASONING),
    UNFINISHED: ("Let me think about this for a very long", ""),
}


@pytest.mark.parametrize("text", list(EXPECTED))
def test_whole_text(text):
    piece = split_text(text)
    assert (piece.reasoning, piece.content) == EXPECTED[text]


@pytest.mark.parametrize("text", list(EXPECTED))
def test_every_two_way_cut(text):
    for cut in range(len(text) + 1):
        assert run([text[:cut], text[cut:]]) == EXPECTED[text], cut


@pytest.mark.parametrize("text", list(EXPECTED))
def test_character_by_character_and_random_cuts(text):
    assert run(list(text)) == EXPECTED[text]
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), 4))
        chunks = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
        assert run(chunks) == EXPECTED[text]


def test_reasoning_streams_live_once_the_opening_tag_is_seen():
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>\n").reasoning == ""
    assert splitter.feed("Okay so").reasoning == "Okay so"
    # a tail that may be the closing tag is held back, then released
    assert splitter.feed(" hm </thi").reasoning == " hm "
    piece = splitter.feed("s is not a tag")
    assert piece.reasoning == "</this is not a tag" and piece.content == ""


def test_opened_template_streams_from_the_first_character():
    splitter = ReasoningSplitter(opened=True)
    assert splitter.feed("Okay").reasoning == "Okay"
    piece = splitter.feed("</think>\n\nAnswer")
    assert (piece.reasoning, piece.content) == ("", "Answer")


def test_answer_after_reasoning_streams_unchanged():
    splitter = ReasoningSplitter()
    splitter.feed("<think>a</think>")
    assert splitter.feed("<b>bold</b> and </think>").content == "<b>bold</b> and </think>"


def test_opened_template_tolerates_a_repeated_opening_tag():
    assert run(["<thi", "nk>\nhmm</think>", "ok"], opened=True) == ("hmm", "ok")
