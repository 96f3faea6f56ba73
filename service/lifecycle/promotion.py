"""Canary-gated promotion: a staged candidate against the serving model, on the same canaries.

Each canary the serving model answers is decoded again by the candidate (a shadow decode that
answers no one), so the two WERs of a set are over the same audio and references: a paired
comparison, not two samples of traffic. The candidate is decided once every set seen has at
least `min_canaries`; it is promoted when on every set its WER is at most `max_increase` above
the serving model's, and rejected otherwise.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from ctc_asr.v1 import asr_pb2
from service.lifecycle.served import ServedModel
from service.session.stream import ShadowJob

log = logging.getLogger(__name__)

PROMOTED, REJECTED = "promoted", "rejected"
EXPIRED, REPLACED, STOPPED = "expired", "replaced", "stopped"  # dropped undecided
SHADOW_QUEUE = 16  # canaries waiting for a candidate's one shadow decode at a time; more are not shadowed


@dataclass
class SetTally:
    canaries: int = 0
    reference_words: int = 0
    serving_errors: int = 0
    candidate_errors: int = 0

    @property
    def serving_wer(self) -> float:
        return self.serving_errors / max(self.reference_words, 1)

    @property
    def candidate_wer(self) -> float:
        return self.candidate_errors / max(self.reference_words, 1)


@dataclass(frozen=True)
class Decision:
    result: str
    message: str
    sets: tuple[asr_pb2.CanaryComparison, ...]


@dataclass
class Evaluation:
    min_canaries: int
    max_increase: float
    sets: dict[str, SetTally] = field(default_factory=dict)

    def add(self, set_name: str, serving: asr_pb2.CanaryScore, candidate: asr_pb2.CanaryScore) -> SetTally:
        """One canary of set `set_name` scored by both models."""
        tally = self.sets.setdefault(set_name, SetTally())
        tally.canaries += 1
        tally.reference_words += serving.reference_words
        tally.serving_errors += serving.word_errors
        tally.candidate_errors += candidate.word_errors
        return tally

    def comparisons(self) -> tuple[asr_pb2.CanaryComparison, ...]:
        return tuple(asr_pb2.CanaryComparison(set=name, canaries=t.canaries, reference_words=t.reference_words,
                                              candidate_wer=t.candidate_wer, serving_wer=t.serving_wer)
                     for name, t in sorted(self.sets.items()))

    def summary(self) -> str:
        return "; ".join(f"set {c.set}: {c.canaries} canaries, WER {c.candidate_wer:.3f} vs serving "
                         f"{c.serving_wer:.3f}" for c in self.comparisons()) or "no canaries"

    def decision(self) -> Decision | None:
        """Promoted or rejected once every set seen has enough canaries; None until then."""
        if not self.sets or any(t.canaries < self.min_canaries for t in self.sets.values()):
            return None
        worse = [name for name, t in sorted(self.sets.items())
                 if t.candidate_wer > t.serving_wer + self.max_increase]
        if worse:
            return Decision(REJECTED, f"rejected: worse than the serving model by more than "
                            f"{self.max_increase:g} WER on {', '.join(worse)} ({self.summary()})", self.comparisons())
        return Decision(PROMOTED, f"promoted: no set more than {self.max_increase:g} WER worse ({self.summary()})",
                        self.comparisons())

    def ended(self, result: str, why: str) -> Decision:
        """A candidate dropped before a decision (expired, replaced)."""
        return Decision(result, f"{result}: {why} ({self.summary()})", self.comparisons())


class Candidate:
    """A staged model: it decodes again the canaries its serving model answers, one at a time,
    until the evaluation decides, the deadline passes, or it is dropped."""

    def __init__(self, served: ServedModel, serving: ServedModel, evaluation: Evaluation, self_check_wer: float,
                 deadline: float) -> None:
        self.served, self.serving, self.evaluation = served, serving, evaluation
        self.self_check_wer = self_check_wer
        self.deadline = deadline
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(SHADOW_QUEUE)
        self.decided: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self.worker: asyncio.Task | None = None
        self.skipped = 0

    def offer(self, job: ShadowJob) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(job)
            return
        self.skipped += 1
        if self.skipped == 1:
            log.warning("model %s: the candidate falls behind the canaries (%d waiting); later ones are not "
                        "shadowed until it catches up", self.served.name, SHADOW_QUEUE)
