"""End-of-utterance rules on the model's output, as sherpa-onnx and WeNet use them.

A frame counts as silence when the blank posterior exceeds `blank_threshold`.
An endpoint fires on trailing silence after speech (`silence_after_speech`),
on long silence with nothing decoded (`silence_no_speech`: the utterance is
dropped, not finalized), or when an utterance grows past `max_utterance`.
With endpointing off only the last applies, so that one utterance's decoding
state stays bounded however long the stream.
"""

from dataclasses import dataclass

import numpy as np

SILENCE_AFTER_SPEECH = "silence_after_speech"
SILENCE_NO_SPEECH = "silence_no_speech"
MAX_UTTERANCE = "max_utterance"


@dataclass(frozen=True)
class EndpointConfig:
    enabled: bool = True
    silence_after_speech_s: float = 1.2
    silence_no_speech_s: float = 2.4
    max_utterance_s: float = 20.0
    blank_threshold: float = 0.8

    def __post_init__(self) -> None:
        if not 0 < self.silence_after_speech_s <= self.max_utterance_s:
            raise ValueError("endpoint silence after speech must be positive and below the maximum utterance")
        if not 0 < self.silence_no_speech_s:
            raise ValueError("endpoint silence without speech must be positive")
        if not 0 < self.blank_threshold < 1:
            raise ValueError("endpoint blank threshold must be between 0 and 1")


@dataclass
class Endpointer:
    """Per-utterance counters, in output frames."""
    cfg: EndpointConfig
    frame_s: float
    blank: int
    frames: int = 0
    trailing_silence: int = 0
    speech: bool = False

    def update(self, logprobs: np.ndarray) -> str | None:
        """Feeds the next output frames; returns the rule that fired, if one did."""
        if len(logprobs) == 0:
            return None
        if not self.cfg.enabled:
            self.frames += len(logprobs)
            return MAX_UTTERANCE if self.frames * self.frame_s >= self.cfg.max_utterance_s else None
        silent = np.exp(logprobs[:, self.blank]) > self.cfg.blank_threshold
        spoken = np.flatnonzero(logprobs.argmax(axis=1) != self.blank)
        if len(spoken):
            self.speech = True
        trailing = len(silent) - 1 - np.flatnonzero(~silent)[-1] if not silent.all() else None
        self.trailing_silence = trailing if trailing is not None else self.trailing_silence + len(silent)
        self.frames += len(logprobs)
        silence_s, length_s = self.trailing_silence * self.frame_s, self.frames * self.frame_s
        if self.speech and silence_s >= self.cfg.silence_after_speech_s:
            return SILENCE_AFTER_SPEECH
        if not self.speech and silence_s >= self.cfg.silence_no_speech_s:
            return SILENCE_NO_SPEECH
        if length_s >= self.cfg.max_utterance_s:
            return MAX_UTTERANCE
        return None

    def reset(self) -> None:
        self.frames, self.trailing_silence, self.speech = 0, 0, False

    def resume(self, frames: int, speech: bool) -> None:
        """A new utterance that already holds `frames` (those after a cut), spoken or not."""
        self.frames, self.trailing_silence, self.speech = frames, 0, speech
