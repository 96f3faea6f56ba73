"""The compiled beam search on any input a model directory or a model can give it: it never
takes the process down, its results are well formed, and where the Python reference can
follow in a test's time it agrees with it (hypothesis).

`.ci/run` also runs this file and the engines' parity tests once against a build of the
engine under AddressSanitizer and UndefinedBehaviorSanitizer (scripts/sanitize_native.sh).
"""

import math
import string

import numpy as np
import pytest
from conftest import BUNDLED
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.decoder.beam_search import PythonBeamSearch, SearchOptions, token_kinds
from engine.decoder.native import NativeBeamSearch
from engine.model.directory import MAX_BEAM_WIDTH

LM, UNIGRAMS = BUNDLED / "lm.bin", (BUNDLED / "unigrams.txt").read_text().split()
LETTERS = string.ascii_lowercase + "'"


def vocabulary(seed: int, size: int, pieces: bool, blank_last: bool) -> list[str]:
    """`size` distinct tokens with one blank: letters (then other characters) with a space, or
    sentencepiece-style word pieces (`▁the`, `ing`), with a special token or two."""
    rng = np.random.default_rng(seed)
    body: list[str] = []
    if pieces:
        seen = set()
        while len(body) < size - 1:
            piece = "".join(rng.choice(list(LETTERS[:26]), rng.integers(1, 5)))
            token = ("▁" + piece) if rng.random() < 0.5 else piece
            if len(body) == 0:
                token = "▁"
            elif len(body) == 1 and size > 4:
                token = "<unk>"
            if token not in seen:
                seen.add(token), body.append(token)
    else:
        chars = [" "] + list(LETTERS) + [chr(0x4E00 + i) for i in range(size)]
        body = chars[:size - 1]
    return body + ["<blk>"] if blank_last else ["<blk>"] + body


def logprobs(seed: int, frames: int, vocab: list[str], shape: str) -> np.ndarray:
    """(frames, V) float32: peaky (a token per frame, as CTC models are), flat, all blank, or with
    -inf entries (a model's log(0)), whole rows of -inf included."""
    rng = np.random.default_rng(seed)
    v, blank = len(vocab), vocab.index("<blk>")
    if shape == "all blank":
        out = np.full((frames, v), -30.0)
        out[:, blank] = 0.0
        return out.astype(np.float32)
    logits = rng.normal(0, 1 if shape == "flat" else 2, (frames, v))
    if shape != "flat":
        winners = np.where(rng.random(frames) < 0.5, blank, rng.integers(0, v, frames))
        logits[np.arange(frames), winners] += rng.uniform(4, 12, frames)
    out = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    if shape == "-inf":
        out[rng.random((frames, v)) < 0.3] = -np.inf
        out[rng.random(frames) < 0.05] = -np.inf
    return out.astype(np.float32)


@st.composite
def cases(draw):
    pieces = draw(st.booleans())
    size = draw(st.one_of(st.integers(2, 40), st.integers(41, 5000)))
    frames = draw(st.one_of(st.just(0), st.just(1), st.integers(2, 60), st.integers(61, 3000)))
    beam = draw(st.one_of(st.integers(1, 8), st.integers(9, MAX_BEAM_WIDTH)))
    if frames * beam > 60_000:  # a test's time: wide beams over short clips, narrow over long ones
        frames = max(1, 60_000 // beam)
    use_lm = draw(st.booleans())
    vocab = vocabulary(draw(st.integers(0, 2**32 - 1)), size, pieces, draw(st.booleans()))
    words = sorted({t.strip("▁ ") for t in vocab if t.strip("▁ ") and t != "<blk>" and not t.startswith("<")})
    hotwords = tuple(draw(st.lists(st.sampled_from(words or ["x"]), max_size=3)))
    cuts = draw(st.lists(st.integers(1, max(frames - 1, 1)), max_size=4, unique=True))
    return dict(vocab=vocab, use_lm=use_lm, unigrams=draw(st.booleans()),
                opts=SearchOptions(beam, use_lm, draw(st.sampled_from([0.0, 0.8, 2.5])),
                                   draw(st.sampled_from([-1.0, 0.0, 2.0])), hotwords, 4.0),
                logprobs=logprobs(draw(st.integers(0, 2**32 - 1)), frames, vocab,
                                  draw(st.sampled_from(["peaky", "flat", "all blank", "-inf"]))),
                cuts=sorted(c for c in cuts if c < frames), blank_skip=draw(st.sampled_from([None, 0.95])))


def run(engine, case) -> list:
    """Interim results chunk by chunk, then the 3-best."""
    search, seen, lp = engine.start(case["opts"]), [], case["logprobs"]
    for start, end in zip([0] + case["cuts"], case["cuts"] + [len(lp)]):
        if end > start:
            search.advance(lp[start:end])
        seen.append(search.interim())
    return seen + [search.finish(3)]


def engines(case):
    lm = LM if case["use_lm"] else None
    unigrams = UNIGRAMS if case["unigrams"] else []
    return (NativeBeamSearch(case["vocab"], lm, unigrams, case["blank_skip"]),
            PythonBeamSearch(case["vocab"], lm, unigrams, case["blank_skip"]))


def assert_close(ours, theirs, where="") -> None:
    if isinstance(ours, float):
        assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-4), f"{where}: {ours} vs {theirs}"
    elif isinstance(ours, (tuple, list)):
        assert len(ours) == len(theirs), f"{where}: {ours} vs {theirs}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, f"{where}: {ours!r} vs {theirs!r}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_the_native_engine_survives_any_input_and_agrees_with_the_reference(case):
    native, python = engines(case)
    ours = run(native, case)
    _, texts = token_kinds(case["vocab"])
    pieces = {t for t in texts if t}
    for _text, confidence, stability in ours[:-1]:
        assert 0.0 <= confidence <= 1.0 + 1e-9 and 0.0 <= stability <= 1.0 + 1e-9
    best = ours[-1]
    assert 1 <= len(best) <= 3 and all(math.isfinite(score) for _, score in best)
    assert [s for _, s in best] == sorted((s for _, s in best), reverse=True)
    frames = len(case["logprobs"])
    for words, _ in best:
        for word, start, end, confidence in words:
            assert word and 0 <= start < end <= frames and 0.0 <= confidence <= 1.0 + 1e-9
            assert any(p in word for p in pieces)  # made of the vocabulary's pieces
    # The reference is pure Python: followed where it runs in a fraction of a second.
    if frames * len(case["vocab"]) * case["opts"].beam_width <= 400_000:
        event("compared with the reference")
        assert_close(ours, run(python, case))


def test_non_finite_log_probabilities_are_refused_not_decoded():
    vocab = vocabulary(0, 10, False, False)
    search = NativeBeamSearch(vocab, LM, UNIGRAMS).start(SearchOptions(8, True, 0.8, 2.0, (), 4.0))
    good = logprobs(1, 5, vocab, "peaky")
    for bad in (np.nan, np.inf):
        lp = good.copy()
        lp[2, 3] = bad
        with pytest.raises(ValueError, match="NaN or \\+inf"):
            search.advance(lp)
    search.advance(good)  # the utterance is as it was: still usable
    assert search.finish(1)


def test_clipping_matches_the_reference_on_rows_of_minus_infinity():
    vocab = vocabulary(0, 6, False, False)
    lp = np.full((4, 6), -np.inf, np.float32)
    lp[1, 2] = 0.0
    case = dict(vocab=vocab, use_lm=True, unigrams=True, blank_skip=None, logprobs=lp, cuts=[],
                opts=SearchOptions(4, True, 0.8, 2.0, (), 4.0))
    native, python = engines(case)
    assert_close(run(native, case), run(python, case))
