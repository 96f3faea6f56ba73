"""Forced alignment: a given text's words placed on an utterance's CTC log-probabilities.

A second pass rewrites a final's text but hears no times; the first pass's outputs say when each
sound was made. The text is spelled in the model's own tokens and the single most likely CTC path
that emits exactly those tokens (Viterbi over blank-interleaved states, as torchaudio's
`forced_align`) gives each word its frames and, from the probabilities on that path, how well the
audio supports it.
"""

import numpy as np

from engine.decoder.beam_search import BLANK, KIND_BLANK, KIND_DELIMITER, KIND_WORD_START, Words, token_kinds


class Aligner:
    def __init__(self, tokens: list[str]) -> None:
        kinds, texts = token_kinds(tokens)
        self.blank = tokens.index(BLANK)
        delimiters = [i for i, k in enumerate(kinds) if k == KIND_DELIMITER]
        self._delimiter = delimiters[0] if delimiters else None
        # Word pieces by text, longest first within each kind: a word is spelled greedily.
        self._starts = {texts[i]: i for i, k in enumerate(kinds) if k == KIND_WORD_START and texts[i]}
        self._pieces = {texts[i]: i for i, k in enumerate(kinds) if k not in (KIND_BLANK, KIND_DELIMITER,
                                                                              KIND_WORD_START) and texts[i]}
        self._longest = max(map(len, [*self._starts, *self._pieces, "x"]))

    def spell(self, word: str) -> list[int]:
        """A word as the model's tokens, longest pieces first: a vocabulary of word pieces starts it
        with a piece that starts words (or its delimiter alone), a character vocabulary spells it
        letter by letter. A letter the vocabulary lacks is skipped: it cannot be aligned."""
        out, i = [], 0
        if self._starts:
            start = self._longest_match(word, 0, self._starts)
            if start:
                out.append(self._starts[word[:start]])
                i = start
            elif self._delimiter is not None:
                out.append(self._delimiter)
        while i < len(word):
            n = self._longest_match(word, i, self._pieces)
            if n:
                out.append(self._pieces[word[i:i + n]])
            i += n or 1
        return out

    def _longest_match(self, word: str, at: int, table: dict[str, int]) -> int:
        for n in range(min(self._longest, len(word) - at), 0, -1):
            if word[at:at + n] in table:
                return n
        return 0

    def align(self, words: list[str], logprobs: np.ndarray) -> Words | None:
        """Each word's frames on `logprobs` (T, V) and its confidence (the geometric mean probability of
        its tokens on the path: one letter the audio does not support pulls it down), or None where the
        words cannot fit in T frames."""
        targets, owner = self._targets(words)
        found = viterbi(logprobs, np.array(targets, np.int64), self.blank)
        if found is None:
            return None
        path, _ = found
        frames: dict[int, list[int]] = {}
        for t, state in enumerate(path):
            if state % 2 and owner[state // 2] >= 0:
                frames.setdefault(owner[state // 2], []).append(t)
        out: Words = []
        for n, word in enumerate(words):
            mine = frames.get(n)
            if not mine:  # nothing of it is in the vocabulary: it sits where the previous word ends
                at = out[-1][2] if out else 0
                out.append((word, at, at, 0.0))
                continue
            on_path = logprobs[mine, [targets[path[t] // 2] for t in mine]]
            out.append((word, mine[0], mine[-1] + 1, float(np.exp(on_path.mean()))))
        return out


    def path_score(self, words: list[str], logprobs: np.ndarray) -> float:
        """The log-probability of the most likely CTC path on `logprobs` (T, V) that emits exactly
        these words (-inf where they cannot fit): how well the first pass's outputs support a text,
        words left out included (their frames must then be blank)."""
        found = viterbi(logprobs, np.array(self._targets(words)[0], np.int64), self.blank)
        return -np.inf if found is None else found[1]

    def _targets(self, words: list[str]) -> tuple[list[int], list[int]]:
        """The words as one token sequence, and the word each token belongs to (-1: a delimiter)."""
        targets, owner = [], []
        for n, word in enumerate(words):
            if n and self._delimiter is not None and not self._starts:  # characters: a delimiter between words
                targets.append(self._delimiter), owner.append(-1)
            spelled = self.spell(word)
            targets += spelled
            owner += [n] * len(spelled)
        return targets, owner


def viterbi(logprobs: np.ndarray, targets: np.ndarray, blank: int) -> tuple[np.ndarray, float] | None:
    """The state (2k+1: target k; even: a blank) of each frame on the most likely CTC path that
    emits `targets`, and that path's log-probability, or None where T frames are too few (each
    token a frame, a blank between repeats)."""
    frames, n = len(logprobs), len(targets)
    repeats = int(np.sum(targets[1:] == targets[:-1])) if n else 0
    if frames < n + repeats or frames == 0:
        return None
    if n == 0:  # nothing said: every frame blank
        return np.zeros(frames, np.int64), float(logprobs[:, blank].sum())
    states = 2 * n + 1
    labels = np.full(states, blank, np.int64)
    labels[1::2] = targets
    skip = np.zeros(states, bool)  # a token may follow the previous one without a blank between
    skip[3::2] = targets[1:] != targets[:-1]
    emit = logprobs[:, labels].astype(np.float64)
    score = np.full(states, -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((frames, states), np.int8)  # how many states back the best predecessor is
    for t in range(1, frames):
        one = np.concatenate([[-np.inf], score[:-1]])
        two = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        moves = np.stack([score, one, two])
        back[t] = np.argmax(moves, axis=0)
        score = moves[back[t], np.arange(states)] + emit[t]
    state = states - 1 if states == 1 or score[-1] >= score[-2] else states - 2
    if not np.isfinite(score[state]):
        return None
    best = float(score[state])
    path = np.empty(frames, np.int64)
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= back[t, state]
    return path, best
