"""The gRPC adapter of `service.speech`: protobuf messages in, events out as
`StreamingRecognizeResponse`s (which the WebSocket sends too, in protobuf's
JSON mapping), `ServiceError`s as gRPC status codes."""

import grpc
from google.protobuf.duration_pb2 import Duration

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.admission import client_id, grpc_peer_host
from service.beam_search import vocabulary_kind
from service.decoder import Hypothesis
from service.model_registry import Reloader
from service.speech import (EndOfSingleUtterance, Event, FinalResult, InterimResult, ServedModel, ServiceError,
                            Speech, SpeechBegin, SpeechEnd, Status)

SpeechEvent = asr_pb2.StreamingRecognizeResponse.SpeechEventType


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def alternatives(hyps: list[Hypothesis], word_offsets: bool) -> list[asr_pb2.SpeechRecognitionAlternative]:
    out = []
    for h in hyps:
        alt = asr_pb2.SpeechRecognitionAlternative(transcript=h.text, confidence=h.confidence)
        if word_offsets:
            alt.words.extend(asr_pb2.WordInfo(word=w.word, start_time=_duration(w.start),
                                              end_time=_duration(w.end), confidence=w.confidence)
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
                result_end_time=_duration(end))])
        case FinalResult():
            response = asr_pb2.StreamingRecognizeResponse(
                results=[asr_pb2.StreamingRecognitionResult(
                    alternatives=alternatives(event.hypotheses, word_offsets), is_final=True,
                    result_end_time=_duration(event.end))], endpoint_reason=event.reason)
            if event.billed_seconds is not None:
                response.total_billed_time.CopyFrom(_duration(event.billed_seconds))
            if event.canary is not None:
                response.canary_score.CopyFrom(event.canary)
            return response
    raise TypeError(f"not a stream event: {event!r}")


def model_info(served: ServedModel) -> asr_pb2.ModelInfo:
    s, recognizer = served.spec, served.recognizer
    step = s.features.hop_length / s.features.sample_rate
    return asr_pb2.ModelInfo(
        name=served.name, version=s.version, sample_rate_hertz=s.features.sample_rate, tokens=s.tokens,
        subsampling_factor=s.subsampling_factor, chunk_duration=_duration(s.chunk_frames * step),
        lookahead=_duration(s.lookahead_frames * step), provider=recognizer.session.provider,
        has_language_model=recognizer.decoder.has_lm, parameters=s.parameters,
        language_code=s.language_code, decoder=recognizer.decoder.engine_description,
        frontend=s.features.kind + ("" if s.features.normalize == "none" else f", {s.features.normalize} "
                                    "normalization per window"),
        vocabulary=vocabulary_kind(list(s.tokens)), streaming=s.streaming_description)


async def _abort(context: grpc.aio.ServicerContext, e: ServiceError):
    await context.abort(grpc.StatusCode[e.status.name], e.message)


DEADLINE_SLACK_SECONDS = 0.5


def _expired(context: grpc.aio.ServicerContext):
    """Whether the call's deadline has passed (a cancellation then is DEADLINE_EXCEEDED). Our view of
    the deadline starts when the call reaches us, later than the client's: on a loaded machine the
    client's cancel at its deadline can arrive while ours is still a moment away, hence the slack."""
    return lambda: (remaining := context.time_remaining()) is not None and remaining <= DEADLINE_SLACK_SECONDS


def _client(context: grpc.aio.ServicerContext, by_token: bool) -> str:
    """Whom the call counts against for per-client limits: its token (already checked), else its address."""
    token = dict(context.invocation_metadata() or ()).get("authorization", "").removeprefix("Bearer ")
    return client_id(token if by_token else None, grpc_peer_host(context.peer()))


class SpeechServicer(asr_pb2_grpc.SpeechServicer):
    def __init__(self, speech: Speech, by_token: bool) -> None:
        """`by_token`: clients are told apart by their bearer tokens (configured), else by address."""
        self.speech = speech
        self.by_token = by_token

    async def Recognize(self, request, context):
        try:
            async with self.speech.call("Recognize", _expired(context)):
                if (size := request.ByteSize()) > self.speech.cfg.max_message_bytes:
                    raise ServiceError(Status.RESOURCE_EXHAUSTED, f"a request of {size} bytes; at most "
                                       f"{self.speech.cfg.max_message_bytes} (--max-message-bytes)")
                transcript = await self.speech.recognize("Recognize", _client(context, self.by_token), request.config,
                                                         request.audio_content)
        except ServiceError as e:
            await _abort(context, e)
        response = asr_pb2.RecognizeResponse(total_billed_time=_duration(transcript.seconds))
        for final in transcript.finals:
            response.results.add(alternatives=alternatives(final.hypotheses, request.config.enable_word_time_offsets),
                                 result_end_time=_duration(final.end))
        if transcript.canary is not None:
            response.canary_score.CopyFrom(transcript.canary)
        return response

    async def StreamingRecognize(self, request_iterator, context):
        try:
            async with self.speech.stream_call("StreamingRecognize", _client(context, self.by_token),
                                               _expired(context)):
                requests = self.speech.idle_limited(request_iterator)
                first = await anext(requests, None)
                if first is None or first.WhichOneof("streaming_request") != "streaming_config":
                    raise ServiceError(Status.INVALID_ARGUMENT,
                                       "the first message must carry streaming_config (and no audio)")
                sc = first.streaming_config
                async for event in self.speech.stream(sc, self._audio(requests)):
                    yield streaming_response(event, sc.config.enable_word_time_offsets)
        except ServiceError as e:
            await _abort(context, e)

    @staticmethod
    async def _audio(requests):
        async for request in requests:
            if request.WhichOneof("streaming_request") != "audio_content":
                raise ServiceError(Status.INVALID_ARGUMENT,
                                   "streaming_config may only be sent once, in the first message")
            yield request.audio_content

    async def GetModelInfo(self, request, context):
        try:
            async with self.speech.call("GetModelInfo"):
                return model_info(self.speech.model(request.name))
        except ServiceError as e:
            await _abort(context, e)

    async def ListModels(self, request, context):
        try:
            async with self.speech.call("ListModels"):
                return asr_pb2.ListModelsResponse(models=[model_info(m) for m in self.speech.models.values()])
        except ServiceError as e:
            await _abort(context, e)


class AdminServicer(asr_pb2_grpc.AdminServicer):
    def __init__(self, speech: Speech, reloader: Reloader, open_: bool) -> None:
        """`open_`: callers are authenticated (tokens or mutual TLS) or the operator opened it anyway."""
        self.speech = speech
        self.reloader = reloader
        self.open = open_

    async def ReloadModel(self, request, context):
        try:
            async with self.speech.call("ReloadModel", _expired(context)):
                if not self.open:
                    raise ServiceError(Status.PERMISSION_DENIED, "the Admin service is closed on a server without "
                                       "--auth-tokens-file or --tls-client-ca (--admin-without-auth opens it on a "
                                       "trusted network); SIGHUP reloads the models")
                outcome = await self.reloader.reload(request.name, request.directory, request.stage)
        except ServiceError as e:
            await _abort(context, e)
        return asr_pb2.ReloadModelResponse(result=outcome.result, message=outcome.message,
                                           model=model_info(outcome.serving), sets=outcome.sets,
                                           self_check_wer=outcome.self_check_wer)
