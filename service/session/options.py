"""RecognitionConfig -> validated, typed options, once per request.

Every field the server cannot honour is rejected by name with
INVALID_ARGUMENT rather than silently ignored.
"""

import math
from dataclasses import dataclass

from ctc_asr.v1 import asr_pb2
from engine.decoder.ctc import DecodeOptions
from engine.model.directory import MAX_BEAM_WIDTH, MAX_LM_WEIGHT, MAX_WORD_BONUS, ModelSpec
from engine.text import normalize
from service.session.audio import RAW_WIDTH, AudioError, Encoding, check_rate

MAX_ALTERNATIVES = 10
MAX_HOTWORDS = 100  # phrases, over all speech_contexts
MAX_PHRASE_CHARS = 100
MAX_BOOST = 100.0
MAX_LANGUAGE_CODE_CHARS = 35  # BCP-47's longest registered tags are shorter
MAX_REFERENCE_CHARS = 5000
MAX_SET_CHARS = 64
MAX_CHANNELS = 8


@dataclass(frozen=True)
class RequestOptions:
    decode: DecodeOptions
    word_offsets: bool
    canary_reference: str  # "" unless the request is a labelled canary
    canary_set: str
    format_numbers: bool = False
    punctuation: bool = False  # finals as a second pass writes them, where the model has one
    phrases: tuple[str, ...] = ()  # the hotwords as the caller wrote them (a second pass reads them so)

    @property
    def traffic(self) -> str:
        return "canary" if self.canary_reference else "user"


def _number(value: float, field: str, low: float, high: float) -> float:
    if not (math.isfinite(value) and low <= value <= high):
        raise AudioError(f"{field} must be a number from {low:g} to {high:g}, not {value:g}")
    return value


def _length(text: str, field: str, most: int) -> str:
    if len(text) > most:
        raise AudioError(f"{field} is {len(text)} characters; at most {most}")
    return text


def recognition_options(config: asr_pb2.RecognitionConfig, spec: ModelSpec) -> RequestOptions:
    """Every field checked against its documented range (INVALID_ARGUMENT naming it), once."""
    lang = _length(config.language_code, "config.language_code", MAX_LANGUAGE_CODE_CHARS)
    if lang and lang.split("-")[0].lower() != spec.language_code.split("-")[0].lower():
        raise AudioError(f"config.language_code {lang!r} is not served; this model is {spec.language_code!r}")
    if config.encoding not in (*RAW_WIDTH, Encoding.ENCODING_UNSPECIFIED, Encoding.WAV, Encoding.FLAC):
        raise AudioError(f"config.encoding {config.encoding} is not a known AudioEncoding")
    if config.sample_rate_hertz:
        check_rate(config.sample_rate_hertz, "config.sample_rate_hertz")
    if not 0 <= config.audio_channel_count <= MAX_CHANNELS:
        raise AudioError(f"config.audio_channel_count must be between 1 and {MAX_CHANNELS} (0: one), "
                         f"not {config.audio_channel_count}")
    if not 0 <= config.max_alternatives <= MAX_ALTERNATIVES:
        raise AudioError(f"config.max_alternatives must be between 0 and {MAX_ALTERNATIVES}")
    d = config.decoder
    if not 0 <= d.beam_width <= MAX_BEAM_WIDTH:
        raise AudioError(f"config.decoder.beam_width must be between 0 and {MAX_BEAM_WIDTH}")
    if sum(len(ctx.phrases) for ctx in config.speech_contexts) > MAX_HOTWORDS:
        raise AudioError(f"config.speech_contexts: at most {MAX_HOTWORDS} phrases")
    written = tuple(_length(x, "config.speech_contexts.phrases[]", MAX_PHRASE_CHARS).strip()
                    for ctx in config.speech_contexts for x in ctx.phrases)
    phrases = tuple(p for p in map(normalize, written) if p)
    boosts = {_number(ctx.boost, "config.speech_contexts.boost", 0.0, MAX_BOOST)
              for ctx in config.speech_contexts if ctx.phrases}
    if len(boosts) > 1:
        raise AudioError("config.speech_contexts: one boost value for all contexts is supported")
    boost = boosts.pop() if boosts else 0.0
    reference = _length(config.canary.reference, "config.canary.reference", MAX_REFERENCE_CHARS)
    canary_set = _length(config.canary.set, "config.canary.set", MAX_SET_CHARS)
    if canary_set and not reference:
        raise AudioError("config.canary.set is set without config.canary.reference")
    if reference and not normalize(reference):
        raise AudioError("config.canary.reference has no words")
    decode = DecodeOptions(
        beam_width=d.beam_width or spec.beam_width,
        lm_weight=_number(d.lm_weight, "config.decoder.lm_weight", 0.0, MAX_LM_WEIGHT)
        if d.HasField("lm_weight") else spec.lm_weight,
        word_bonus=_number(d.word_bonus, "config.decoder.word_bonus", -MAX_WORD_BONUS, MAX_WORD_BONUS)
        if d.HasField("word_bonus") else spec.word_bonus,
        use_lm=not d.disable_lm,
        hotwords=phrases,
        hotword_weight=boost or 10.0,
        alternatives=max(1, config.max_alternatives),
    )
    return RequestOptions(decode, config.enable_word_time_offsets, reference, canary_set, config.format_numbers,
                          config.enable_automatic_punctuation, tuple(w for w in written if w))
