"""The gRPC adapter of `service.session.speech`: protobuf messages in, events out as
`StreamingRecognizeResponse`s (`service.transports.messages`), `ServiceError`s as gRPC status codes."""

import grpc

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.config import ServerConfig
from service.errors import ServiceError, Status
from service.lifecycle.registry import Reloader
from service.session.admission import client_id, grpc_peer_host
from service.session.speech import Speech
from service.transports.messages import alternatives, duration, model_info, streaming_response
from service.transports.security import bearer


async def abort(context: grpc.aio.ServicerContext, e: ServiceError):
    await context.abort(grpc.StatusCode[e.status.name], e.message)


DEADLINE_SLACK_SECONDS = 0.5


def deadline_passed(context: grpc.aio.ServicerContext):
    """Whether the call's deadline has passed (a cancellation then is DEADLINE_EXCEEDED). Our view of
    the deadline starts when the call reaches us, later than the client's: on a loaded machine the
    client's cancel at its deadline can arrive while ours is still a moment away, hence the slack."""
    return lambda: (remaining := context.time_remaining()) is not None and remaining <= DEADLINE_SLACK_SECONDS


def caller(context: grpc.aio.ServicerContext, by_token: bool) -> str:
    """Whom the call counts against for per-client limits: its token (already checked), else its address."""
    token = bearer([value for key, value in context.invocation_metadata() or () if key == "authorization"])
    return client_id(token if by_token else None, grpc_peer_host(context.peer()))


async def streaming_config(requests):
    """A stream's first message, which must carry its streaming_config (ours and Google's alike)."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("streaming_request") != "streaming_config":
        raise ServiceError(Status.INVALID_ARGUMENT, "the first message must carry streaming_config (and no audio)")
    return first.streaming_config


async def audio_messages(requests):
    """The audio of the messages after the first."""
    async for request in requests:
        if request.WhichOneof("streaming_request") != "audio_content":
            raise ServiceError(Status.INVALID_ARGUMENT, "streaming_config may only be sent once, in the first message")
        yield request.audio_content


def check_size(request, cfg: ServerConfig) -> None:
    """A whole-file request over --max-file-bytes is refused (gRPC lets through messages up to the
    larger of it and --max-message-bytes, and a few bytes more, so that the refusal is ours)."""
    if (size := request.ByteSize()) > cfg.max_file_bytes:
        raise ServiceError(Status.RESOURCE_EXHAUSTED, f"a request of {size} bytes; at most {cfg.max_file_bytes} "
                           "(--max-file-bytes)")


class SpeechServicer(asr_pb2_grpc.SpeechServicer):
    def __init__(self, speech: Speech, by_token: bool) -> None:
        """`by_token`: clients are told apart by their bearer tokens (configured), else by address."""
        self.speech = speech
        self.by_token = by_token

    async def Recognize(self, request, context):
        try:
            async with self.speech.call("Recognize", deadline_passed(context)):
                check_size(request, self.speech.cfg)
                transcript = await self.speech.recognize("Recognize", caller(context, self.by_token), request.config,
                                                         request.audio_content)
        except ServiceError as e:
            await abort(context, e)
        response = asr_pb2.RecognizeResponse(total_billed_time=duration(transcript.seconds))
        for final in transcript.finals:
            response.results.add(alternatives=alternatives(final.hypotheses, request.config.enable_word_time_offsets),
                                 result_end_time=duration(final.end),
                                 second_pass_fallback=final.second_pass_fallback)
        if transcript.canary is not None:
            response.canary_score.CopyFrom(transcript.canary)
        return response

    async def StreamingRecognize(self, request_iterator, context):
        try:
            async with self.speech.stream_call("StreamingRecognize", caller(context, self.by_token),
                                               deadline_passed(context)):
                requests = self.speech.idle_limited(request_iterator)
                sc = await streaming_config(requests)
                async for event in self.speech.stream(sc, audio_messages(requests)):
                    yield streaming_response(event, sc.config.enable_word_time_offsets)
        except ServiceError as e:
            await abort(context, e)

    async def GetModelInfo(self, request, context):
        try:
            async with self.speech.call("GetModelInfo"):
                return model_info(self.speech.models.get(request.name))
        except ServiceError as e:
            await abort(context, e)

    async def ListModels(self, request, context):
        try:
            async with self.speech.call("ListModels"):
                return asr_pb2.ListModelsResponse(models=[model_info(m) for m in self.speech.models.served()])
        except ServiceError as e:
            await abort(context, e)


class AdminServicer(asr_pb2_grpc.AdminServicer):
    def __init__(self, speech: Speech, reloader: Reloader, open_: bool) -> None:
        """`open_`: callers are authenticated (tokens or mutual TLS) or the operator opened it anyway."""
        self.speech = speech
        self.reloader = reloader
        self.open = open_

    async def ReloadModel(self, request, context):
        try:
            async with self.speech.call("ReloadModel", deadline_passed(context)):
                if not self.open:
                    raise ServiceError(Status.PERMISSION_DENIED, "the Admin service is closed on a server without "
                                       "--auth-tokens-file or --tls-client-ca (--admin-without-auth opens it on a "
                                       "trusted network); SIGHUP reloads the models")
                outcome = await self.reloader.reload(request.name, request.directory, request.stage)
        except ServiceError as e:
            await abort(context, e)
        return asr_pb2.ReloadModelResponse(result=outcome.result, message=outcome.message,
                                           model=model_info(outcome.serving), sets=outcome.sets,
                                           self_check_wer=outcome.self_check_wer)
