"""Incremental CTC decoding: greedy, or beam search with KenLM and hotwords.

pyctcdecode 0.5.0 restarts its beams on every call, so the frame loop that
carries beams from chunk to chunk is ours (`_advance_beams`, the char-alphabet
branch of its `_decode_logits`), built on its language model, hotword scorer
and beam helpers. Everything one utterance needs, beams and LM score caches
included, lives in a `DecodeState` that is dropped at the final, so memory
stays flat on long streams.
"""

import functools
from dataclasses import dataclass, field

import kenlm
import numpy as np
from pyctcdecode.alphabet import Alphabet
from pyctcdecode.constants import AVG_TOKEN_LEN, MIN_TOKEN_CLIP_P
from pyctcdecode.decoder import (EMPTY_START_BEAM, NULL_FRAMES, BeamSearchDecoderCTC, _normalize_whitespace,
                                 _sort_and_trim_beams, _sum_log_scores)
from pyctcdecode.language_model import HotwordScorer, LanguageModel, _prepare_unigram_set

from service.model_session import ModelSpec

BLANK, SPACE = "<blk>", "▁"

TOKEN_MIN_LOGP = -5.0  # tokens less likely than this are not expanded, unless a frame's best
BEAM_PRUNE_LOGP = -10.0  # beams this much worse than the best are dropped
_LOG_CLIP = float(np.log(MIN_TOKEN_CLIP_P))


def ctc_labels(tokens: list[str]) -> list[str]:
    """pyctcdecode's labels for our tokens: blank as "", the word piece marker as a space."""
    return ["" if t == BLANK else " " if t == SPACE else t for t in tokens]


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


@dataclass
class DecodeState:
    """One utterance's decoding state."""
    opts: DecodeOptions
    search: BeamSearchDecoderCTC | None  # None: greedy
    hotwords: HotwordScorer
    beams: list = field(default_factory=lambda: [EMPTY_START_BEAM])
    lm_cache: dict = field(default_factory=dict)  # (text, is_eos) -> (score, raw score, kenlm state)
    partial_cache: dict = field(default_factory=dict)  # partial word -> score
    best_ids: list[np.ndarray] = field(default_factory=list)  # greedy path, per chunk
    best_probs: list[np.ndarray] = field(default_factory=list)  # max probability per frame, per chunk
    frames: int = 0
    offset: int = 0  # where this utterance's first frame lies in the stream, in frames (for word times)


def _merge_beams(beams: list) -> dict:
    """Merges beams with the same text, summing their probabilities. Unlike
    pyctcdecode's, the word frames kept are the more probable beam's, so word
    times follow the best alignment rather than the first one seen. Keyed by
    (text with the finished word joined, word in progress, last character)."""
    merged: dict = {}
    for beam in beams:
        text, next_word, word_part, last_char, *_, score = beam
        # pyctcdecode's _merge_tokens, inlined: this runs for every candidate of every frame
        key = (f"{text} {next_word}" if text and next_word else text or next_word, word_part, last_char)
        kept = merged.get(key)
        if kept is None:
            merged[key] = beam
        else:
            best = beam if score > kept[-1] else kept
            merged[key] = (*best[:-1], _sum_log_scores(kept[-1], score))
    return merged


class CtcDecoder:
    def __init__(self, spec: ModelSpec) -> None:
        """`spec`: a model directory's ModelSpec, or anything with its tokens, lm, unigrams and
        frame_seconds (training validates with this decoder before a directory exists)."""
        self.spec = spec
        self._labels = ctc_labels(spec.tokens)
        self._blank = spec.tokens.index(BLANK)
        self._alphabet = Alphabet.build_alphabet(self._labels)
        if self._alphabet.is_bpe:
            raise ValueError("only character vocabularies are supported")
        self._kenlm = kenlm.Model(str(spec.lm)) if spec.lm else None
        self._unigrams = spec.unigrams.read_text().split() if spec.unigrams else []
        # Every prefix of a known word: pyctcdecode walks a trie for this check, per new partial word,
        # which was a fifth of beam search's time; a set answers the same question at once.
        known = _prepare_unigram_set(self._unigrams, self._kenlm) if self._kenlm else ()
        self._prefixes = frozenset(w[:i] for w in known for i in range(1, len(w) + 1))
        self._plain = BeamSearchDecoderCTC(self._alphabet, None)

    @property
    def has_lm(self) -> bool:
        return self._kenlm is not None

    @functools.lru_cache(maxsize=16)
    def _with_lm(self, lm_weight: float, word_bonus: float) -> BeamSearchDecoderCTC:
        """One decoder per (weight, bonus): per-request overrides never mutate a shared one."""
        lm = LanguageModel(self._kenlm, self._unigrams, alpha=lm_weight, beta=word_bonus)
        return BeamSearchDecoderCTC(self._alphabet, lm)

    def start(self, opts: DecodeOptions, offset: int = 0) -> DecodeState:
        """A fresh utterance whose first frame describes the audio `offset` frames into the stream
        (negative at the start of a stream for a model whose first outputs are a look-ahead pre-roll)."""
        search = None
        if not opts.greedy:
            search = self._with_lm(opts.lm_weight, opts.word_bonus) if opts.use_lm and self.has_lm else self._plain
        state = DecodeState(opts, search, HotwordScorer.build_scorer(list(opts.hotwords) or None,
                                                                      weight=opts.hotword_weight), offset=offset)
        lm = search._language_model if search else None
        state.lm_cache[("", False)] = (0.0, 0.0, lm.get_start_state() if lm else None)
        return state

    def advance(self, state: DecodeState, logprobs: np.ndarray) -> None:
        """Consumes the next frames (T, V) of log-probabilities."""
        if len(logprobs) == 0:
            return
        state.best_probs.append(np.exp(logprobs.max(axis=1)))
        state.best_ids.append(logprobs.argmax(axis=1))
        if state.search is not None:
            self._advance_beams(state, np.clip(logprobs, _LOG_CLIP, 0))
        state.frames += len(logprobs)

    def _advance_beams(self, state: DecodeState, logprobs: np.ndarray) -> None:
        labels, beams = self._labels, state.beams
        for t, column in enumerate(logprobs, start=state.frames):
            expand = set(np.flatnonzero(column >= TOKEN_MIN_LOGP).tolist()) | {int(column.argmax())}
            logp = column.tolist()  # Python floats: numpy scalars are several times slower to add
            candidates = []
            for idx in expand:
                p, char = logp[idx], labels[idx]
                for text, next_word, word_part, last_char, text_frames, part_frames, score in beams:
                    if char == "" or last_char == char:  # blank or a repeat: same text
                        frames = part_frames if char == "" else (part_frames[0], t + 1)
                        candidates.append((text, next_word, word_part, char, text_frames, frames, score + p))
                    elif char == " ":  # a word ends
                        done = text_frames if word_part == "" else text_frames + [part_frames]
                        candidates.append((text, word_part, "", char, done, NULL_FRAMES, score + p))
                    else:
                        frames = (t, t + 1) if part_frames[0] < 0 else (part_frames[0], t + 1)
                        candidates.append((text, next_word, word_part + char, char, text_frames, frames, score + p))
            scored = self._scored(state, _merge_beams(candidates))
            best = max(b[-1] for b in scored)
            scored = [b for b in scored if b[-1] >= best + BEAM_PRUNE_LOGP]
            beams = [b[:-1] for b in _sort_and_trim_beams(scored, state.opts.beam_width)]
        state.beams = beams

    def _scored(self, state: DecodeState, merged: dict, is_eos: bool = False) -> list:
        """`_merge_beams`' beams with their LM and hotword score added: pyctcdecode's
        `_get_lm_beams`, same scores, with the partial-word check answered by `_prefixes`."""
        lm, cache, out = state.search._language_model, state.lm_cache, []
        for (new_text, _, _), beam in merged.items():
            text, next_word, word_part, last_char, text_frames, part_frames, logit_score = beam
            key = (new_text, is_eos)
            if key not in cache:
                _, prev_raw, start = cache[(text, False)]
                score, end = lm.score(start, next_word, is_last_word=is_eos) if lm else (0.0, None)
                cache[key] = (prev_raw + score + state.hotwords.score(new_text), prev_raw + score, end)
            lm_score = cache[key][0]
            if word_part:
                partial = state.partial_cache.get(word_part)
                if partial is None:
                    partial = state.partial_cache[word_part] = self._partial_score(state, lm, word_part)
                lm_score += partial
            out.append((new_text, "", word_part, last_char, text_frames, part_frames, logit_score,
                        logit_score + lm_score))
        return out

    def _partial_score(self, state: DecodeState, lm: LanguageModel | None, word_part: str) -> float:
        """A word in progress: the hotword bonus if it starts one, else (with an LM) the
        unknown-word penalty unless it starts a known word, growing past the average word length."""
        if state.opts.hotwords and word_part in state.hotwords:
            return state.hotwords.score_partial_token(word_part)
        if lm is None or word_part in self._prefixes:
            return 0.0
        return lm.unk_score_offset * (len(word_part) / AVG_TOKEN_LEN if len(word_part) > AVG_TOKEN_LEN else 1)

    def partial(self, state: DecodeState) -> Hypothesis:
        """The best hypothesis so far, the word in progress included; the state is unchanged."""
        if state.search is None:
            return self._hypothesis(state, self._greedy_words(state))
        text, _, word_part, _, text_frames, part_frames, _ = state.beams[0]
        words = text.split() + ([word_part] if word_part else [])
        spans = text_frames + ([part_frames] if word_part else [])
        return self._hypothesis(state, [(w, s, e) for w, (s, e) in zip(words, spans)])

    def stability(self, state: DecodeState) -> float:
        """How likely the interim text is to stay: with beams, the share of probability
        (by acoustic score) on beams whose completed words agree with the best beam's;
        greedy decoding never revises past frames, so the last chunk's mean best-token probability."""
        if state.search is None:
            return float(state.best_probs[-1].mean()) if state.best_probs else 0.0
        scores = np.array([b[6] for b in state.beams])
        weights = np.exp(scores - scores.max())
        agree = np.array([b[0] == state.beams[0][0] for b in state.beams])
        return float(weights[agree].sum() / weights.sum())

    def finish(self, state: DecodeState) -> list[Hypothesis]:
        """Final LM scoring (end of sentence); up to opts.alternatives hypotheses, best first."""
        if state.search is None or state.frames == 0:
            return [self.partial(state)] if state.search is None else [Hypothesis("", 0.0, ())]
        closed = [(text, word_part, "", None, text_frames + ([part_frames] if word_part else []), NULL_FRAMES, score)
                  for text, _, word_part, _, text_frames, part_frames, score in state.beams]
        scored = self._scored(state, _merge_beams(closed), is_eos=True)
        best = max(b[-1] for b in scored)
        scored = [b for b in scored if b[-1] >= best + BEAM_PRUNE_LOGP]
        out = []
        for text, _, _, _, text_frames, _, _, _ in _sort_and_trim_beams(scored, state.opts.alternatives):
            words = _normalize_whitespace(text).split()
            out.append(self._hypothesis(state, [(w, s, e) for w, (s, e) in zip(words, text_frames)]))
        return out

    def decode(self, logprobs: np.ndarray, opts: DecodeOptions) -> list[Hypothesis]:
        """Whole-utterance convenience: start, advance, finish."""
        state = self.start(opts)
        self.advance(state, logprobs)
        return self.finish(state)

    def _greedy_words(self, state: DecodeState) -> list[tuple[str, int, int]]:
        """(word, first frame, last frame + 1) of the best path."""
        words, chars, start, end, prev = [], [], 0, 0, self._blank
        for t, i in enumerate(np.concatenate(state.best_ids) if state.best_ids else ()):
            label = self._labels[i]
            if i != prev and label:
                if label == " ":
                    if chars:
                        words.append(("".join(chars), start, end))
                    chars = []
                else:
                    start = t if not chars else start
                    chars.append(label)
            if chars and label not in ("", " "):
                end = t + 1
            prev = i
        if chars:
            words.append(("".join(chars), start, end))
        return words

    def _hypothesis(self, state: DecodeState, spans: list[tuple[str, int, int]]) -> Hypothesis:
        best = np.concatenate(state.best_probs) if state.best_probs else np.zeros(0)
        step, o = self.spec.frame_seconds, state.offset
        words = tuple(Word(w, max(0.0, (o + s) * step), max(0.0, (o + max(e, s + 1)) * step),
                           float(best[s:max(e, s + 1)].mean()))
                      for w, s, e in spans)
        confidence = float(np.mean([w.confidence for w in words])) if words else 0.0
        return Hypothesis(" ".join(w.word for w in words), confidence, words)
