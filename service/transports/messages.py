"""Events and models as the wire contract's messages (`ctc_asr.v1`), for every transport:
gRPC sends them as they are, the WebSocket in protobuf's JSON mapping."""

from google.protobuf.duration_pb2 import Duration

from ctc_asr.v1 import asr_pb2
from engine.decoder.beam_search import vocabulary_kind
from engine.decoder.ctc import Hypothesis
from service.lifecycle.served import ServedModel
from service.session.events import EndOfSingleUtterance, Event, FinalResult, InterimResult, SpeechBegin, SpeechEnd

SpeechEvent = asr_pb2.StreamingRecognizeResponse.SpeechEventType


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def alternatives(hyps: list[Hypothesis], word_offsets: bool) -> list[asr_pb2.SpeechRecognitionAlternative]:
    out = []
    for h in hyps:
        alt = asr_pb2.SpeechRecognitionAlternative(transcript=h.text, confidence=h.confidence)
        if word_offsets:
            alt.words.extend(asr_pb2.WordInfo(word=w.word, start_time=duration(w.start),
                                              end_time=duration(w.end), confidence=w.confidence)
                             for w in h.words)
        out.append(alt)
    return out


def streaming_response(event: Event, word_offsets: bool) -> asr_pb2.StreamingRecognizeResponse:
    match event:
        case SpeechBegin():
            return asr_pb2.StreamingRecognizeResponse(speech_event_type=SpeechEvent.SPEECH_ACTIVITY_BEGIN)
        case SpeechEnd():
            return asr_pb2.StreamingRecognizeResponse(speech_event_type=SpeechEvent.SPEECH_ACTIVITY_END)
        case EndOfSingleUtterance():
            return asr_pb2.StreamingRecognizeResponse(speech_event_type=SpeechEvent.END_OF_SINGLE_UTTERANCE)
        case InterimResult(hypothesis=hyp, stability=stability, end=end):
            return asr_pb2.StreamingRecognizeResponse(results=[asr_pb2.StreamingRecognitionResult(
                alternatives=alternatives([hyp], False), is_final=False, stability=stability,
                result_end_time=duration(end))])
        case FinalResult():
            response = asr_pb2.StreamingRecognizeResponse(
                results=[asr_pb2.StreamingRecognitionResult(
                    alternatives=alternatives(event.hypotheses, word_offsets), is_final=True,
                    result_end_time=duration(event.end), second_pass_fallback=event.second_pass_fallback)],
                endpoint_reason=event.reason)
            if event.billed_seconds is not None:
                response.total_billed_time.CopyFrom(duration(event.billed_seconds))
            if event.canary is not None:
                response.canary_score.CopyFrom(event.canary)
            return response
    raise TypeError(f"not a stream event: {event!r}")


def model_info(served: ServedModel) -> asr_pb2.ModelInfo:
    s, recognizer = served.spec, served.recognizer
    step = s.features.hop_length / s.features.sample_rate
    return asr_pb2.ModelInfo(
        name=served.name, version=s.version, sample_rate_hertz=s.features.sample_rate, tokens=s.tokens,
        subsampling_factor=s.subsampling_factor, chunk_duration=duration(s.chunk_frames * step),
        lookahead=duration(s.lookahead_frames * step), provider=recognizer.session.provider,
        has_language_model=recognizer.decoder.has_lm, parameters=s.parameters,
        language_code=s.language_code, decoder=recognizer.decoder.engine_description,
        frontend=s.features.kind + ("" if s.features.normalize == "none" else f", {s.features.normalize} "
                                    "normalization per window"),
        vocabulary=vocabulary_kind(list(s.tokens)), streaming=s.streaming_description)
