"""Forced alignment (engine/decoder/alignment.py): a given text's words timed on CTC outputs."""

import numpy as np
import pytest

from engine.decoder.alignment import Aligner
from engine.decoder.ctc import CtcDecoder, DecoderInputs

CHARACTERS = ["<blk>", "▁", *"abcdefghijklmnopqrstuvwxyz", "'"]


def outputs(tokens: list[str], frames: list[str], sure: float = 0.9) -> np.ndarray:
    """Log-probabilities where each frame's named token has `sure` of the mass ("" : the blank)."""
    lp = np.full((len(frames), len(tokens)), (1 - sure) / (len(tokens) - 1))
    for t, name in enumerate(frames):
        lp[t, tokens.index(name or "<blk>")] = sure
    return np.log(lp)


def test_each_word_gets_the_frames_its_letters_were_heard_in():
    lp = outputs(CHARACTERS, ["", "c", "a", "a", "t", "", "▁", "", "s", "a", "t", "", ""])
    words = Aligner(CHARACTERS).align(["cat", "sat"], lp)
    assert [(w, s, e) for w, s, e, _ in words] == [("cat", 1, 5), ("sat", 8, 11)]
    assert all(c == pytest.approx(0.9) for *_, c in words)


def test_a_word_the_audio_does_not_support_gets_a_low_confidence():
    lp = outputs(CHARACTERS, ["", "c", "a", "t", "", "▁", "", "s", "a", "t", ""])
    cat, mat = Aligner(CHARACTERS).align(["cat", "mat"], lp)
    assert cat[3] > 0.8 and mat[3] < 0.3


def test_too_few_frames_share_them_evenly_with_no_confidence():
    """Two l's need a blank between them: three frames cannot hold "all"."""
    decoder = CtcDecoder(DecoderInputs(tuple(CHARACTERS), None, None, frame_seconds=0.04))
    lp = outputs(CHARACTERS, ["a", "l", "l"])
    assert Aligner(CHARACTERS).align(["all"], lp) is None
    hyp = decoder.align("all", lp, offset=10)
    assert [(w.word, w.start, w.end, w.confidence) for w in hyp.words] == [("all", pytest.approx(0.4),
                                                                            pytest.approx(0.52), 0.0)]


def test_a_text_that_leaves_out_heard_words_is_supported_less():
    """The best path's score per frame: the heard text scores highest, one that drops a word the
    audio holds far lower (its frames must be blank), and an empty text (nothing said) is an
    all-blank path that still times as no words."""
    decoder = CtcDecoder(DecoderInputs(tuple(CHARACTERS), None, None, frame_seconds=0.04))
    lp = outputs(CHARACTERS, ["", "c", "a", "t", "", "▁", "", "s", "a", "t", ""])
    heard, dropped, empty = (decoder.path_score(t, lp) for t in ("cat sat", "sat", ""))
    assert heard > dropped + 0.5 and dropped > empty
    assert decoder.align("", lp, offset=0).words == ()


def test_word_pieces_spell_a_word_from_a_piece_that_starts_one():
    pieces = ["<blk>", "▁", "▁the", "▁ca", "t", "s", "▁s", "a"]
    aligner = Aligner(pieces)
    assert aligner.spell("cats") == [3, 4, 5]
    assert aligner.spell("tat") == [1, 4, 7, 4]  # no piece starts it: the delimiter, then pieces
    lp = outputs(pieces, ["", "▁the", "", "▁ca", "t", "s", ""])
    assert [(w, s, e) for w, s, e, _ in aligner.align(["the", "cats"], lp)] == [("the", 1, 2), ("cats", 3, 6)]
