"""CTC prefix beam search with word-level KenLM and hotwords: the shared shape of
the two engines, and the Python one, which is the reference.

pyctcdecode 0.5.0 restarts its beams on every call, so the frame loop that
carries beams from chunk to chunk is ours (`_advance`, after its `_decode_logits`),
built on its language model, hotword scorer and beam helpers. The compiled engine
(service/native) runs the same search and is held to this one by a parity test.

Vocabularies: a token is the blank, a word delimiter (`▁` alone, a space, or `|`),
a word piece that starts a word (`▁the`: what sentencepiece, NeMo and sherpa-onnx
models emit), or a piece that continues one (every letter of a character vocabulary).
Special tokens in angle brackets (`<unk>`, `<s>`, `</s>`, `<sos/eos>`) add no text, as the
formats' own decoders skip them (transformers' skip_special_tokens).
"""

import math
from dataclasses import dataclass
from typing import Protocol

import kenlm
import numpy as np
from pyctcdecode.constants import AVG_TOKEN_LEN, MIN_TOKEN_CLIP_P
from pyctcdecode.decoder import EMPTY_START_BEAM, NULL_FRAMES, _sort_and_trim_beams, _sum_log_scores
from pyctcdecode.language_model import HotwordScorer, LanguageModel, _prepare_unigram_set

BLANK, WORD_START = "<blk>", "▁"
LM_VARIANTS = 16  # (LM weight, word bonus) pairs an engine keeps an LM for
DELIMITERS = (WORD_START, " ", "|")
TOKEN_MIN_LOGP = -5.0  # tokens less likely than this are not expanded, unless a frame's best
BEAM_PRUNE_LOGP = -10.0  # beams this much worse than the best are dropped

# Token kinds (the compiled engine's numbering).
KIND_BLANK, KIND_DELIMITER, KIND_WORD_START, KIND_PIECE = range(4)

# (word, first frame, last frame + 1, confidence: the mean of its frames' best-token probabilities)
Words = list[tuple[str, int, int, float]]
LOG_CLIP = float(np.log(MIN_TOKEN_CLIP_P))


def token_kinds(tokens: list[str]) -> tuple[list[int], list[str]]:
    """Each token's kind and the text it adds to a word."""
    kinds, texts = [], []
    for t in tokens:
        if t == BLANK:
            kinds.append(KIND_BLANK), texts.append("")
        elif is_special(t):
            kinds.append(KIND_PIECE), texts.append("")
        elif t in DELIMITERS:
            kinds.append(KIND_DELIMITER), texts.append("")
        elif t.startswith(WORD_START):
            kinds.append(KIND_WORD_START), texts.append(t[len(WORD_START):].rstrip(WORD_START))
        else:
            kinds.append(KIND_PIECE), texts.append(t)
    return kinds, texts


def is_special(token: str) -> bool:
    return len(token) > 2 and token.startswith("<") and token.endswith(">")


def vocabulary_kind(tokens: list[str]) -> str:
    """What GetModelInfo and export say of a vocabulary: word pieces, or characters (and their delimiter)."""
    kinds, _ = token_kinds(tokens)
    if KIND_WORD_START in kinds:
        return "word pieces (▁ starts a word)"
    delimiters = [t for t, k in zip(tokens, kinds) if k == KIND_DELIMITER]
    return f"characters ({' '.join(repr(d) for d in delimiters)} between words)" if delimiters else "characters"


def blank_skip_logp(blank_skip: float | None) -> float:
    """The log-probability of the blank from which a frame is skipped (inf: never)."""
    return math.log(blank_skip) if blank_skip else math.inf


@dataclass(frozen=True)
class SearchOptions:
    beam_width: int
    use_lm: bool
    lm_weight: float
    word_bonus: float
    hotwords: tuple[str, ...]  # phrases
    hotword_weight: float

    @property
    def hotword_unigrams(self) -> list[str]:
        """The hotwords' words, as pyctcdecode's HotwordScorer splits them."""
        return [w for phrase in self.hotwords for w in phrase.split()]


class Search(Protocol):
    """One utterance's search, made by its engine's `start`."""

    def advance(self, logprobs: np.ndarray) -> None: ...  # the next (T, V) log-probabilities
    def best(self) -> Words: ...  # the best hypothesis, its word in progress included
    def stability(self) -> float: ...
    def interim(self) -> tuple[str, float, float]: ...  # the best text, its confidence, stability
    def finish(self, n: int) -> list[tuple[Words, float]]: ...  # the n best and their scores, at the end


class BeamSearch(Protocol):
    """An engine: what all utterances share (vocabulary, LM)."""
    name: str

    def start(self, opts: SearchOptions) -> Search: ...
    # Several utterances, each by its own log-probabilities, up to `threads` at once where it can.
    def advance_many(self, searches: list[Search], logprobs: list[np.ndarray], threads: int) -> None: ...


def advance_each(searches: list[Search], logprobs: list[np.ndarray], threads: int) -> None:
    """`BeamSearch.advance_many` one after another: Python engines hold the GIL anyway."""
    for search, lp in zip(searches, logprobs):
        search.advance(lp)


class FrameProbs:
    """Running sum of each frame's best-token probability, in a buffer that doubles when
    full (no per-chunk concatenation on long utterances): word confidences are its means."""

    def __init__(self) -> None:
        self.cum = np.zeros(64)
        self.frames = 0

    def add(self, logprobs: np.ndarray) -> None:
        end = self.frames + len(logprobs)
        if end + 1 > len(self.cum):
            self.cum = np.concatenate([self.cum, np.zeros(max(end + 1, 2 * len(self.cum)))])
        self.cum[self.frames + 1:end + 1] = np.cumsum(np.exp(logprobs.max(axis=1).astype(np.float64)))
        self.cum[self.frames + 1:end + 1] += self.cum[self.frames]
        self.frames = end

    def mean(self, start: int, end: int) -> float:
        end = max(end, start + 1)
        return float((self.cum[end] - self.cum[start]) / (end - start))

    def words(self, spans: list[tuple[str, int, int]]) -> Words:
        return [(w, s, e, self.mean(s, e)) for w, s, e in spans]


class _PythonSearch:
    """`Search.interim` from the other methods (the compiled engine does it in one call)."""
    probs: FrameProbs

    def interim(self) -> tuple[str, float, float]:
        words = self.best()
        confidence = sum(c for *_, c in words) / len(words) if words else 0.0
        return " ".join(w for w, *_ in words), confidence, self.stability()


class GreedySearch:
    """Best path decoding (beam width 1, or nothing to rescore with): repeats collapsed, blanks dropped."""
    name = "greedy"

    def __init__(self, tokens: list[str]) -> None:
        kinds, self.texts = token_kinds(tokens)
        self.blank = kinds.index(KIND_BLANK)
        self.word_ends = [k not in (KIND_BLANK, KIND_PIECE) for k in kinds]

    def start(self, opts: SearchOptions) -> "_Greedy":
        return _Greedy(self)

    advance_many = staticmethod(advance_each)


class _Greedy(_PythonSearch):
    def __init__(self, engine: GreedySearch) -> None:
        self.engine, self.probs, self.ids, self.last_chunk = engine, FrameProbs(), [], 0

    def advance(self, logprobs: np.ndarray) -> None:
        self.probs.add(logprobs)
        self.ids.append(logprobs.argmax(axis=1))
        self.last_chunk = len(logprobs)

    def best(self) -> Words:
        texts, blank, word_ends = self.engine.texts, self.engine.blank, self.engine.word_ends
        words, chars, start, end, prev = [], "", 0, 0, blank
        for t, i in enumerate(np.concatenate(self.ids).tolist() if self.ids else ()):
            if i != prev and i != blank:
                if word_ends[i]:  # a delimiter, or a piece that starts a word
                    if chars:
                        words.append((chars, start, end))
                    chars, start = texts[i], t
                else:
                    start = t if not chars else start
                    chars += texts[i]
            if chars and i != blank and (texts[i] or not word_ends[i]):
                end = t + 1
            prev = i
        if chars:
            words.append((chars, start, end))
        return self.probs.words(words)

    def stability(self) -> float:
        """Greedy decoding never revises past frames: the last chunk's mean best-token probability."""
        p = self.probs
        return p.mean(p.frames - self.last_chunk, p.frames) if p.frames else 0.0

    def finish(self, n: int) -> list[tuple[Words, float]]:
        return [(self.best(), 0.0)]


def _merge_beams(beams: list) -> dict:
    """Merges beams with the same text, summing their probabilities. Unlike
    pyctcdecode's, the word frames kept are the more probable beam's, so word
    times follow the best alignment rather than the first one seen. Keyed by
    (text with the finished word joined, word in progress, last token)."""
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


def _prune(scored: list, n: int) -> list:
    best = max(b[-1] for b in scored)
    return _sort_and_trim_beams([b for b in scored if b[-1] >= best + BEAM_PRUNE_LOGP], n)


class PythonBeamSearch:
    """The reference engine."""
    name = "python"

    def __init__(self, tokens: list[str], lm_path, unigrams: list[str], blank_skip: float | None = None) -> None:
        self.kinds, self.texts = token_kinds(tokens)
        self.blank = self.kinds.index(KIND_BLANK)
        self.skip_logp = blank_skip_logp(blank_skip)
        self._kenlm = kenlm.Model(str(lm_path)) if lm_path else None
        self._unigrams = unigrams
        # Every prefix of a known word: pyctcdecode walks a trie for this check, per new partial word,
        # which was a fifth of beam search's time; a set answers the same question at once.
        known = _prepare_unigram_set(unigrams, self._kenlm) if self._kenlm else ()
        self.prefixes = frozenset(w[:i] for w in known for i in range(1, len(w) + 1))
        self._lms: dict[tuple[float, float], LanguageModel] = {}

    def _lm(self, lm_weight: float, word_bonus: float) -> LanguageModel:
        """One LM per (weight, bonus), the last LM_VARIANTS kept: per-request overrides never mutate a
        shared one. (Kept on the engine: a functools.lru_cache on the method kept every reloaded
        model's engine, KenLM and prefixes alive, 13 MB a reload.)"""
        key = (lm_weight, word_bonus)
        if key not in self._lms:
            if len(self._lms) >= LM_VARIANTS:
                self._lms.pop(next(iter(self._lms)), None)
            self._lms[key] = LanguageModel(self._kenlm, self._unigrams, alpha=lm_weight, beta=word_bonus)
        return self._lms[key]

    advance_many = staticmethod(advance_each)

    def start(self, opts: SearchOptions) -> "PythonSearch":
        lm = self._lm(opts.lm_weight, opts.word_bonus) if opts.use_lm and self._kenlm else None
        return PythonSearch(self, opts, lm)


class PythonSearch(_PythonSearch):
    """One utterance of the reference engine. A beam is pyctcdecode's tuple (text, next word,
    word in progress, last token, completed words' frames, the word in progress's frames,
    acoustic score)."""

    def __init__(self, engine: PythonBeamSearch, opts: SearchOptions, lm: LanguageModel | None) -> None:
        self.engine, self.opts, self.lm, self.probs = engine, opts, lm, FrameProbs()
        self.hotwords = HotwordScorer.build_scorer(list(opts.hotwords) or None, weight=opts.hotword_weight)
        self.beams = [EMPTY_START_BEAM]
        self.lm_cache = {("", False): (0.0, 0.0, lm.get_start_state() if lm else None)}  # (text, is_eos) ->
        self.partial_cache: dict[str, float] = {}  # (score, raw score, kenlm state); partial word -> score

    def advance(self, logprobs: np.ndarray) -> None:
        kinds, texts, beams, first_frame = self.engine.kinds, self.engine.texts, self.beams, self.probs.frames
        blank, skip_logp = self.engine.blank, self.engine.skip_logp
        self.probs.add(logprobs)
        for t, column in enumerate(np.clip(logprobs, LOG_CLIP, 0), start=first_frame):
            logp = column.tolist()  # Python floats: numpy scalars are several times slower to add
            if logp[blank] >= skip_logp:  # blank dominates: every beam takes the blank, nothing else moves
                p = logp[blank]
                beams = [(text, nw, part, blank, tf, pf, score + p) for text, nw, part, _, tf, pf, score in beams]
                continue
            expand = np.flatnonzero(column >= TOKEN_MIN_LOGP).tolist()
            if (best := int(column.argmax())) not in expand:
                expand = sorted(expand + [best])
            candidates = []
            for idx in expand:
                p, kind, piece = logp[idx], kinds[idx], texts[idx]
                for text, next_word, word_part, last, text_frames, part_frames, score in beams:
                    if kind == KIND_BLANK or last == idx:  # blank or a repeat: same text
                        frames = part_frames if kind == KIND_BLANK else (part_frames[0], t + 1)
                        candidates.append((text, next_word, word_part, idx, text_frames, frames, score + p))
                    elif kind != KIND_PIECE:  # a word ends, and a word piece may begin the next
                        done = text_frames if word_part == "" else text_frames + [part_frames]
                        frames = NULL_FRAMES if kind == KIND_DELIMITER else (t, t + 1)
                        candidates.append((text, word_part, piece, idx, done, frames, score + p))
                    else:
                        frames = (t, t + 1) if part_frames[0] < 0 else (part_frames[0], t + 1)
                        candidates.append((text, next_word, word_part + piece, idx, text_frames, frames,
                                           score + p))
            beams = [b[:-1] for b in _prune(self.scored(_merge_beams(candidates)), self.opts.beam_width)]
        self.beams = beams

    def scored(self, merged: dict, is_eos: bool = False) -> list:
        """`_merge_beams`' beams with their LM and hotword score added: pyctcdecode's
        `_get_lm_beams`, same scores, with the partial-word check answered by the prefix set."""
        lm, cache, out = self.lm, self.lm_cache, []
        for (new_text, _, _), beam in merged.items():
            text, next_word, word_part, last, text_frames, part_frames, logit_score = beam
            key = (new_text, is_eos)
            if key not in cache:
                _, prev_raw, start = cache[(text, False)]
                score, end = lm.score(start, next_word, is_last_word=is_eos) if lm else (0.0, None)
                cache[key] = (prev_raw + score + self.hotwords.score(new_text), prev_raw + score, end)
            lm_score = cache[key][0]
            if word_part:
                partial = self.partial_cache.get(word_part)
                if partial is None:
                    partial = self.partial_cache[word_part] = self._partial_score(word_part)
                lm_score += partial
            out.append((new_text, "", word_part, last, text_frames, part_frames, logit_score,
                        logit_score + lm_score))
        return out

    def _partial_score(self, word_part: str) -> float:
        """A word in progress: the hotword bonus if it starts one, else (with an LM) the
        unknown-word penalty unless it starts a known word, growing past the average word length."""
        if self.opts.hotwords and word_part in self.hotwords:
            return self.hotwords.score_partial_token(word_part)
        if self.lm is None or word_part in self.engine.prefixes:
            return 0.0
        return self.lm.unk_score_offset * (len(word_part) / AVG_TOKEN_LEN if len(word_part) > AVG_TOKEN_LEN else 1)

    def best(self) -> Words:
        text, _, word_part, _, text_frames, part_frames, _ = self.beams[0]
        words = text.split() + ([word_part] if word_part else [])
        spans = text_frames + ([part_frames] if word_part else [])
        return self.probs.words([(w, s, e) for w, (s, e) in zip(words, spans)])

    def stability(self) -> float:
        scores = np.array([b[6] for b in self.beams])
        weights = np.exp(scores - scores.max())
        agree = np.array([b[0] == self.beams[0][0] for b in self.beams])
        return float(weights[agree].sum() / weights.sum())

    def finish(self, n: int) -> list[tuple[Words, float]]:
        closed = [(text, word_part, "", None, text_frames + ([part_frames] if word_part else []), NULL_FRAMES, score)
                  for text, _, word_part, _, text_frames, part_frames, score in self.beams]
        out = []
        for text, _, _, _, text_frames, _, _, total in _prune(self.scored(_merge_beams(closed), is_eos=True), n):
            out.append((self.probs.words([(w, s, e) for w, (s, e) in zip(text.split(), text_frames)]), total))
        return out
