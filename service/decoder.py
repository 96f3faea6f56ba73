"""CTC decoding: greedy, or pyctcdecode beam search with the KenLM model.

Decoders are cached per (LM weight, word bonus) so that requests overriding
them never mutate a decoder another request is using.
"""

import functools
import logging
from dataclasses import dataclass

import kenlm
import numpy as np
from pyctcdecode.alphabet import Alphabet
from pyctcdecode.decoder import BeamSearchDecoderCTC
from pyctcdecode.language_model import LanguageModel

from service.model_session import ModelSpec

log = logging.getLogger(__name__)
BLANK, SPACE = "<blk>", "▁"


@dataclass(frozen=True)
class DecodeOptions:
    beam_width: int
    lm_weight: float
    word_bonus: float
    use_lm: bool = True
    hotwords: tuple[str, ...] = ()
    hotword_weight: float = 10.0
    alternatives: int = 1


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds
    end: float
    confidence: float


@dataclass(frozen=True)
class Hypothesis:
    text: str
    confidence: float
    words: tuple[Word, ...]


class CtcDecoder:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._labels = ["" if t == BLANK else " " if t == SPACE else t for t in spec.tokens]
        self._blank = spec.tokens.index(BLANK)
        self._alphabet = Alphabet.build_alphabet(self._labels)
        self._kenlm = kenlm.Model(str(spec.lm)) if spec.lm else None
        self._unigrams = spec.unigrams.read_text().split() if spec.unigrams else []
        self._plain = BeamSearchDecoderCTC(self._alphabet, None)

    @property
    def has_lm(self) -> bool:
        return self._kenlm is not None

    @functools.lru_cache(maxsize=16)
    def _with_lm(self, lm_weight: float, word_bonus: float) -> BeamSearchDecoderCTC:
        lm = LanguageModel(self._kenlm, self._unigrams, alpha=lm_weight, beta=word_bonus)
        return BeamSearchDecoderCTC(self._alphabet, lm)

    def decode(self, logprobs: np.ndarray, opts: DecodeOptions) -> list[Hypothesis]:
        """logprobs (T, V) -> up to opts.alternatives hypotheses, best first."""
        if len(logprobs) == 0:
            return [Hypothesis("", 0.0, ())]
        if opts.beam_width <= 1 or (not opts.use_lm and not opts.hotwords):
            return [self._hypothesis(logprobs, self._greedy_words(logprobs))]
        decoder = self._with_lm(opts.lm_weight, opts.word_bonus) if opts.use_lm and self.has_lm else self._plain
        beams = decoder.decode_beams(logprobs, beam_width=opts.beam_width,
                                     hotwords=list(opts.hotwords) or None,
                                     hotword_weight=opts.hotword_weight)
        # 0.5.0 beams are tuples: (text, lm state, [(word, (start, end))], logit score, lm score)
        return [self._hypothesis(logprobs, [(w, s, e) for w, (s, e) in frames])
                for _, _, frames, _, _ in beams[: opts.alternatives]]

    def _greedy_words(self, logprobs: np.ndarray) -> list[tuple[str, int, int]]:
        """(word, first frame, last frame + 1) of the best path."""
        ids = logprobs.argmax(axis=1)
        words, chars, start, prev = [], [], 0, self._blank
        for t, i in enumerate(ids):
            if i != prev and i != self._blank:
                label = self._labels[i]
                if label == " ":
                    if chars:
                        words.append(("".join(chars), start, t))
                    chars = []
                else:
                    if not chars:
                        start = t
                    chars.append(label)
                    end = t + 1
            prev = i
        if chars:
            words.append(("".join(chars), start, end))
        return words

    def _hypothesis(self, logprobs: np.ndarray, spans: list[tuple[str, int, int]]) -> Hypothesis:
        best = np.exp(logprobs.max(axis=1))
        step = self.spec.frame_seconds
        words = tuple(Word(w, s * step, max(e, s + 1) * step, float(best[s:max(e, s + 1)].mean()))
                      for w, s, e in spans)
        confidence = float(np.mean([w.confidence for w in words])) if words else 0.0
        return Hypothesis(" ".join(w.word for w in words), confidence, words)
