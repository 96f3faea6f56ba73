"""Incremental CTC decoding: greedy, or beam search with KenLM and hotwords.

The beam search runs on one of two engines with the same results
(engine/decoder/beam_search.py): the compiled one where it is built, else the Python
reference. Everything one utterance needs, beams and LM score caches included,
lives in its engine's search state, which is dropped at the final, so memory
stays flat on long streams.
"""

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import kenlm
import numpy as np

from engine.decoder.alignment import Aligner
from engine.decoder.beam_search import BeamSearch, GreedySearch, PythonBeamSearch, Search, SearchOptions, Words
from engine.decoder.native import NATIVE_ERROR, NativeBeamSearch
from engine.model.directory import ModelSpec

log = logging.getLogger(__name__)
ENGINES = ("auto", "native", "python")


@dataclass(frozen=True)
class DecodeOptions:
    beam_width: int
    lm_weight: float
    word_bonus: float
    use_lm: bool = True
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = 10.0
    alternatives: int = 1

    @property
    def greedy(self) -> bool:
        return self.beam_width <= 1 or (not self.use_lm and not self.hotwords)


GREEDY = DecodeOptions(beam_width=1, lm_weight=0, word_bonus=0, use_lm=False)  # best token per frame, no LM


class Word(NamedTuple):  # tuples: interim results make thousands a second
    word: str
    start: float  # seconds
    end: float
    confidence: float


class Hypothesis(NamedTuple):
    text: str
    confidence: float
    words: tuple[Word, ...]
    score: float = 0.0  # a final's total log score (acoustic + LM + hotwords) that ranks the n-best; greedy: 0


@dataclass(frozen=True)
class DecoderInputs:
    """What the decoder reads of a model directory (a ModelSpec has the same fields), for
    decoding without one: a training run that has none yet, a test's other vocabulary."""
    tokens: tuple[str, ...]
    lm: Path | None
    unigrams: Path | None
    frame_seconds: float
    blank_skip: float | None = None


@dataclass
class DecodeState:
    """One utterance's decoding state."""
    opts: DecodeOptions
    search: Search
    frames: int = 0
    offset: int = 0  # where this utterance's first frame lies in the stream, in frames (for word times)


class CtcDecoder:
    def __init__(self, spec: ModelSpec | DecoderInputs, engine: str = "auto", threads: int = 1) -> None:
        """`spec`: a model directory's ModelSpec, or DecoderInputs.
        `engine`: "native" (the compiled beam search; an error where it is not built), "python"
        (the reference), or "auto" (native where built, else Python with a warning).
        `threads`: how many utterances `advance_many` decodes at once (native engine)."""
        if engine not in ENGINES:
            raise ValueError(f"decoder engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self.spec = spec
        self.has_lm = spec.lm is not None
        unigrams = spec.unigrams.read_text().split() if spec.unigrams else []
        if engine == "auto" and NATIVE_ERROR:
            log.warning("beam search: Python (the native engine is %s)", NATIVE_ERROR)
            engine = "python"
        self.engine: BeamSearch = (NativeBeamSearch if engine != "python" else PythonBeamSearch)(
            list(spec.tokens), spec.lm, unigrams, spec.blank_skip)
        self._greedy = GreedySearch(list(spec.tokens))
        self._aligner = Aligner(list(spec.tokens))
        self._lm: kenlm.Model | None = None
        self._lm_lock = threading.Lock()
        self.threads = threads

    @property
    def engine_description(self) -> str:
        """What GetModelInfo and the start-up log say about the beam search."""
        if self.engine.name == "python" and NATIVE_ERROR:
            return f"python (native {NATIVE_ERROR})"
        return self.engine.name

    def start(self, opts: DecodeOptions, offset: int = 0) -> DecodeState:
        """A fresh utterance whose first frame describes the audio `offset` frames into the stream
        (negative at the start of a stream for a model whose first outputs are a look-ahead pre-roll)."""
        return DecodeState(opts, self._engine(opts).start(SearchOptions(
            opts.beam_width, opts.use_lm and self.has_lm, opts.lm_weight, opts.word_bonus, opts.hotwords,
            opts.hotword_weight)), offset=offset)

    def advance(self, state: DecodeState, logprobs: np.ndarray) -> None:
        """Consumes the next frames (T, V) of log-probabilities."""
        if len(logprobs):
            state.search.advance(logprobs)
            state.frames += len(logprobs)

    def _engine(self, opts: DecodeOptions) -> BeamSearch:
        return self._greedy if opts.greedy else self.engine

    def advance_many(self, states: list[DecodeState], logprobs: list[np.ndarray]) -> None:
        """`advance` for several utterances (a model batch's streams): the native engine's in one
        call, `threads` at a time; the Python engines' one after another."""
        batch = [(st, lp) for st, lp in zip(states, logprobs) if len(lp)]
        for engine in (self.engine, self._greedy):
            mine = [(st, lp) for st, lp in batch if self._engine(st.opts) is engine]
            if mine:
                engine.advance_many([st.search for st, _ in mine], [lp for _, lp in mine], self.threads)
        for st, lp in batch:
            st.frames += len(lp)

    def partial(self, state: DecodeState) -> Hypothesis:
        """The best hypothesis so far, the word in progress included; the state is unchanged."""
        return self._hypothesis(state.offset, state.search.best())

    def stability(self, state: DecodeState) -> float:
        """How likely the interim text is to stay: with beams, the share of probability
        (by acoustic score) on beams whose completed words agree with the best beam's;
        greedy decoding never revises past frames, so the last chunk's mean best-token probability."""
        return state.search.stability()

    def interim(self, state: DecodeState) -> tuple[Hypothesis, float]:
        """What an interim result carries (no word times): the best hypothesis so far and its stability."""
        text, confidence, stability = state.search.interim()
        return Hypothesis(text, confidence, ()), stability

    def finish(self, state: DecodeState) -> list[Hypothesis]:
        """Final LM scoring (end of sentence); up to opts.alternatives hypotheses, best first."""
        if state.frames == 0:
            return [Hypothesis("", 0.0, ())]
        return [self._hypothesis(state.offset, words, score)
                for words, score in state.search.finish(state.opts.alternatives)]

    def decode(self, logprobs: np.ndarray, opts: DecodeOptions) -> list[Hypothesis]:
        """Whole-utterance convenience: start, advance, finish."""
        state = self.start(opts)
        self.advance(state, logprobs)
        return self.finish(state)

    def text_score(self, text: str) -> float:
        """The LM's log-probability of a whole sentence (natural log, end of sentence included) per
        word: how another pass's texts are weighed against each other."""
        with self._lm_lock:  # loaded once, on first use: a model without a second pass never needs it
            if self._lm is None:
                self._lm = kenlm.Model(str(self.spec.lm))
        return self._lm.score(text, bos=True, eos=True) * math.log(10) / max(len(text.split()), 1)

    def path_score(self, text: str, logprobs: np.ndarray) -> float:
        """How well the utterance's log-probabilities (T, V) support `text` (spoken form): its best CTC
        path's log-probability per frame (-inf where it cannot fit). A text that leaves out words
        the audio holds scores low: their frames must be blank."""
        return self._aligner.path_score(text.split(), logprobs) / max(len(logprobs), 1)

    def align(self, text: str, logprobs: np.ndarray, offset: int) -> Hypothesis:
        """`text` (another pass's, in the spoken form) timed on the utterance's log-probabilities (T, V)
        whose first frame is `offset` frames into the stream: each word's times and confidence
        from the frames that the most likely path emitting it gives it (forced alignment). Where
        the frames are too few to hold the text, its words share them evenly, confidence 0."""
        words = text.split()
        aligned = self._aligner.align(words, logprobs)
        if aligned is None:
            edges = np.linspace(0, len(logprobs), len(words) + 1).astype(int)
            aligned = [(w, int(s), int(e), 0.0) for w, s, e in zip(words, edges, edges[1:])]
        return self._hypothesis(offset, aligned)

    def _hypothesis(self, offset: int, words: Words, score: float = 0.0) -> Hypothesis:
        if not words:
            return Hypothesis("", 0.0, (), score)
        step, o = self.spec.frame_seconds, offset
        timed = tuple(Word(w, max(0.0, (o + s) * step), max(0.0, (o + max(e, s + 1)) * step), c)
                      for w, s, e, c in words)
        return Hypothesis(" ".join(w for w, *_ in words), sum(c for *_, c in words) / len(words), timed, score)
