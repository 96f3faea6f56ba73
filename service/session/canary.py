"""Labelled canaries: scoring and running accuracy metrics.

Both texts are normalized the same way and edits are counted with jiwer. The
counters feed the PromQL running WER (rate of word errors / rate of reference
words); the gauges are WER/CER over the most recent canaries of each set. The
number of distinct set labels is bounded: sets beyond `max_sets` (or outside the operator's
pinned list) fold into one. A model with a second pass is scored twice per canary (label `pass`):
its finals as served ("second") and its first pass alone ("first"), so that operators see what
the second pass buys.
"""

from collections import defaultdict, deque

import jiwer

from ctc_asr.v1 import asr_pb2
from engine.text import normalize
from service.metrics import Metrics

DEFAULT_SET = "default"
OTHER_SETS = "other"
FIRST, SECOND = "first", "second"  # the pass whose finals are scored


def score(reference: str, hypothesis: str, set_name: str, pass_name: str = FIRST) -> asr_pb2.CanaryScore:
    ref, hyp = normalize(reference), normalize(hypothesis)
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    word_errors = words.substitutions + words.deletions + words.insertions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    ref_words, ref_chars = len(ref.split()), len(ref)
    return asr_pb2.CanaryScore(set=set_name or DEFAULT_SET, word_errors=word_errors, reference_words=ref_words,
                               char_errors=char_errors, reference_chars=ref_chars,
                               wer=word_errors / ref_words, cer=char_errors / ref_chars, pass_name=pass_name)


class CanaryTracker:
    def __init__(self, metrics: Metrics, model: str, max_sets: int = 10, window: int = 100,
                 pinned: tuple[str, ...] = ()) -> None:
        """`pinned`: the set names that get labels of their own (the operator's list); without it,
        the first sets seen, up to `max_sets`."""
        self.metrics = metrics
        self.model = model
        self.max_sets = max_sets
        self.pinned = frozenset(pinned)
        self._recent: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=window))
        # The default set's counters exist from the start, so rate() counts its first canary too.
        for counter in (metrics.canary_requests, metrics.canary_word_errors, metrics.canary_reference_words,
                        metrics.canary_char_errors, metrics.canary_reference_chars):
            counter.labels(DEFAULT_SET, model, FIRST)

    def label(self, set_name: str) -> str:
        """At most `max_sets` labels in all: "default" and "other" are two of them."""
        set_name = set_name or DEFAULT_SET
        if self.pinned:
            return set_name if set_name in self.pinned or set_name == DEFAULT_SET else OTHER_SETS
        named = {s for s, _ in self._recent if s not in (DEFAULT_SET, OTHER_SETS)}
        if set_name == DEFAULT_SET or set_name in named or len(named) < self.max_sets - 2:
            return set_name
        return OTHER_SETS

    def record(self, s: asr_pb2.CanaryScore) -> None:
        name, pass_name = self.label(s.set), s.pass_name or FIRST
        m, labels = self.metrics, (name, self.model, pass_name)
        m.canary_requests.labels(*labels).inc()
        m.canary_word_errors.labels(*labels).inc(s.word_errors)
        m.canary_reference_words.labels(*labels).inc(s.reference_words)
        m.canary_char_errors.labels(*labels).inc(s.char_errors)
        m.canary_reference_chars.labels(*labels).inc(s.reference_chars)
        recent = self._recent[name, pass_name]
        recent.append((s.word_errors, s.reference_words, s.char_errors, s.reference_chars))
        totals = [sum(column) for column in zip(*recent)]
        m.canary_wer.labels(*labels).set(totals[0] / totals[1])
        m.canary_cer.labels(*labels).set(totals[2] / totals[3])
