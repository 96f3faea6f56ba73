"""What a call yields, transport-free: a stream's events in the order a client must see them,
and a whole file's transcript. The transports turn them into their own messages."""

from dataclasses import dataclass

from ctc_asr.v1 import asr_pb2
from engine.decoder.ctc import Hypothesis


@dataclass(frozen=True)
class SpeechBegin:
    pass


@dataclass(frozen=True)
class InterimResult:
    hypothesis: Hypothesis
    stability: float
    end: float  # seconds from the stream's start that the result covers


@dataclass(frozen=True)
class FinalResult:
    hypotheses: list[Hypothesis]
    reason: str  # the endpoint that ended the utterance
    end: float
    billed_seconds: float | None  # on the stream's last final: audio received
    canary: asr_pb2.CanaryScore | None  # on the last final of a labelled canary
    second_pass_fallback: bool = False  # the first pass's final where a second pass was due (load shedding)


@dataclass(frozen=True)
class SpeechEnd:
    pass


@dataclass(frozen=True)
class EndOfSingleUtterance:
    pass


Event = SpeechBegin | InterimResult | FinalResult | SpeechEnd | EndOfSingleUtterance


@dataclass(frozen=True)
class Transcript:
    """A unary call's result: a final per utterance (utterances longer than
    --endpoint-max-utterance-seconds are cut), the audio's length, a canary's score."""
    finals: list[FinalResult]
    seconds: float
    canary: asr_pb2.CanaryScore | None
