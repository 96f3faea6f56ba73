"""RecognitionConfig -> validated, typed options, once per request.

Every field the server cannot honour is rejected by name with
INVALID_ARGUMENT rather than silently ignored.
"""

from dataclasses import dataclass

from ctc_asr.v1 import asr_pb2
from service.audio import RAW_WIDTH, AudioError, Encoding
from service.decoder import DecodeOptions
from service.model_session import MAX_BEAM_WIDTH, ModelSpec
from service.text import normalize

MAX_ALTERNATIVES = 10
MAX_HOTWORDS = 100


@dataclass(frozen=True)
class RequestOptions:
    decode: DecodeOptions
    word_offsets: bool
    canary_reference: str  # "" unless the request is a labelled canary
    canary_set: str
    format_numbers: bool = False

    @property
    def traffic(self) -> str:
        return "canary" if self.canary_reference else "user"


def recognition_options(config: asr_pb2.RecognitionConfig, spec: ModelSpec) -> RequestOptions:
    lang = config.language_code
    if lang and lang.split("-")[0].lower() != spec.language_code.split("-")[0].lower():
        raise AudioError(f"config.language_code {lang!r} is not served; this model is {spec.language_code!r}")
    if config.encoding not in (*RAW_WIDTH, Encoding.ENCODING_UNSPECIFIED, Encoding.WAV, Encoding.FLAC):
        raise AudioError(f"config.encoding {config.encoding} is not a known AudioEncoding")
    if not 0 <= config.max_alternatives <= MAX_ALTERNATIVES:
        raise AudioError(f"config.max_alternatives must be between 0 and {MAX_ALTERNATIVES}")
    d = config.decoder
    if not 0 <= d.beam_width <= MAX_BEAM_WIDTH:
        raise AudioError(f"config.decoder.beam_width must be between 0 and {MAX_BEAM_WIDTH}")
    phrases = tuple(p for ctx in config.speech_contexts for p in (normalize(x) for x in ctx.phrases) if p)
    boosts = {ctx.boost for ctx in config.speech_contexts if ctx.phrases}
    if len(boosts) > 1:
        raise AudioError("config.speech_contexts: one boost value for all contexts is supported")
    if len(phrases) > MAX_HOTWORDS:
        raise AudioError(f"config.speech_contexts: at most {MAX_HOTWORDS} phrases")
    boost = boosts.pop() if boosts else 0.0
    if boost < 0:
        raise AudioError("config.speech_contexts.boost must not be negative")
    if config.canary.set and not config.canary.reference:
        raise AudioError("config.canary.set is set without config.canary.reference")
    if config.canary.reference and not normalize(config.canary.reference):
        raise AudioError("config.canary.reference has no words")
    decode = DecodeOptions(
        beam_width=d.beam_width or spec.beam_width,
        lm_weight=d.lm_weight if d.HasField("lm_weight") else spec.lm_weight,
        word_bonus=d.word_bonus if d.HasField("word_bonus") else spec.word_bonus,
        use_lm=not d.disable_lm,
        hotwords=phrases,
        hotword_weight=boost or 10.0,
        alternatives=max(1, config.max_alternatives),
    )
    return RequestOptions(decode, config.enable_word_time_offsets, config.canary.reference, config.canary.set,
                          config.format_numbers)
