"""A long recording -> segments cut at pauses, each short enough to decode as one utterance.

Whole files are not decoded as one stream: their segments are independent, so a file's segments
run side by side (`service.session.segments`), and a pause shorter than a stream's endpoint
(people pause 0.3-1 s between sentences; the endpoint waits 1.2 s) still ends a word, which a
character CTC model trained on single sentences often runs into the next one ("parisremind").

Pauses are found on the audio's energy, before any model runs: 10 ms frames, quiet where they are
below a level set between the recent noise floor and the recent speech level. A segment ends in
the middle of the first quiet run of `min_pause_s` once it holds `min_segment_s`; one that reaches
`max_segment_s` without a pause ends at its quietest 100 ms in its last fifth, never at a fixed time.
"""

from collections import deque
from dataclasses import dataclass

import numpy as np

FRAME_S = 0.01
HISTORY_S = 30.0  # the floor and speech levels are those of the last 30 s
FLOOR_PERCENTILE, SPEECH_PERCENTILE = 10, 95
QUIET_SHARE = 0.2  # quiet: below floor + 20% of the way to the speech level ...
MIN_QUIET_DB = 6.0  # ... and at least this far above the floor
CUT_WINDOW = 0.2  # a segment with no pause ends in its last fifth


@dataclass(frozen=True)
class SegmentRule:
    min_pause_s: float = 0.4
    min_segment_s: float = 1.0
    max_segment_s: float = 19.0

    def __post_init__(self) -> None:
        if not 0 < self.min_pause_s < self.min_segment_s < self.max_segment_s:
            raise ValueError("segments need 0 < min pause < min segment < max segment")

    @classmethod
    def within(cls, max_utterance_s: float) -> "SegmentRule":
        """Segments a little shorter than an utterance may be (so that a segment is one)."""
        longest = min(cls.max_segment_s, 0.95 * max_utterance_s)
        shortest = min(cls.min_segment_s, longest / 2)
        return cls(min(cls.min_pause_s, shortest / 2), shortest, longest)


@dataclass(frozen=True)
class Segment:
    start: int  # the first sample, counted from the start of the recording
    samples: np.ndarray


class Segmenter:
    """Samples in, in any blocks; segments out as soon as their end is known. Holds one
    segment's audio at most (plus a block)."""

    def __init__(self, rate: int, rule: SegmentRule = SegmentRule()) -> None:
        self.rule = rule
        self._frame = int(rate * FRAME_S)
        self._held = np.zeros(0, np.float32)  # the open segment's samples
        self._start = 0  # the open segment's first sample
        self._levels: deque[float] = deque(maxlen=int(HISTORY_S / FRAME_S))  # dB of recent frames
        self._db = np.zeros(0)  # dB of the held samples' whole frames
        self._min_pause = round(rule.min_pause_s / FRAME_S)
        self._min_segment = round(rule.min_segment_s / FRAME_S)
        self._max_segment = round(rule.max_segment_s / FRAME_S)

    def accept(self, samples: np.ndarray) -> list[Segment]:
        self._held = np.concatenate([self._held, samples.astype(np.float32, copy=False)])
        whole = len(self._held) // self._frame
        if whole > len(self._db):
            frames = self._held[len(self._db) * self._frame:whole * self._frame].reshape(-1, self._frame)
            db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
            self._levels.extend(db)
            self._db = np.concatenate([self._db, db])
        out = []
        while (cut := self._cut()) is not None:
            out.append(self._take(cut * self._frame))
        return out

    def finish(self) -> list[Segment]:
        """The rest (a segment unless nothing is left)."""
        return [self._take(len(self._held))] if len(self._held) else []

    def _take(self, samples: int) -> Segment:
        segment = Segment(self._start, self._held[:samples])
        self._held, self._db = self._held[samples:], self._db[samples // self._frame:]
        self._start += samples
        return segment

    def _cut(self) -> int | None:
        """The frame at which the open segment ends, once known."""
        db = self._db
        if len(db) < self._min_segment + self._min_pause and len(db) < self._max_segment:
            return None
        levels = np.fromiter(self._levels, float)
        floor, speech = np.percentile(levels, [FLOOR_PERCENTILE, SPEECH_PERCENTILE])
        quiet = db[:self._max_segment] < floor + max(MIN_QUIET_DB, QUIET_SHARE * (speech - floor))
        # the first quiet run of min_pause whose middle is past min_segment, once it has ended (or
        # is twice min_pause long: a long silence is cut min_pause into it), cut in its middle
        run = 0
        for i in range(len(quiet)):
            run = run + 1 if quiet[i] else 0
            ended = i + 1 < len(quiet) and not quiet[i + 1]
            middle = i + 1 - run // 2
            if run >= self._min_pause and middle >= self._min_segment and (ended or run >= 2 * self._min_pause):
                return middle
        if len(db) < self._max_segment:
            return None
        start = int(self._max_segment * (1 - CUT_WINDOW))
        smoothed = np.convolve(db[start:self._max_segment], np.ones(10) / 10, mode="same")
        return start + int(smoothed.argmin())
