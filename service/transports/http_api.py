"""The HTTP adapter of `service.session.speech` (aiohttp, on the gRPC server's event loop):

- `POST /v1/audio/transcriptions`: OpenAI's transcription API as its official
  clients call it (multipart `file`, `model`, `language`, `prompt`,
  `response_format`, `timestamp_granularities[]`, `temperature`, `stream`),
  plus `format_numbers`; errors as OpenAI's JSON errors.
- `GET /v1/models`: the served models, in OpenAI's list shape.
- `/v1/stream`: WebSocket streaming, `StreamingRecognitionConfig` and
  `StreamingRecognizeResponse` in protobuf's JSON mapping.
- `/`: a page that streams the microphone; `/healthz`, `/readyz`.

Same TLS, bearer tokens, limits, admission and metrics as gRPC.
"""

import asyncio
import json
import logging
from dataclasses import dataclass
from importlib import resources

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format

from ctc_asr.v1 import asr_pb2
from service.config import ServerConfig
from service.errors import ServiceError, Status
from service.session.admission import client_id
from service.session.events import FinalResult
from service.session.speech import Speech
from service.transports.connections import ConnectionGuard
from service.transports.messages import streaming_response
from service.transports.security import Tokens, bearer

log = logging.getLogger(__name__)
PAGE = resources.files("service.transports").joinpath("web/index.html")
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
FORM_SLACK = 64 * 1024
OPENAI_ERROR_TYPES = {Status.UNAUTHENTICATED: "authentication_error", Status.RESOURCE_EXHAUSTED: "rate_limit_error",
                      Status.INTERNAL: "server_error", Status.UNAVAILABLE: "server_error"}
WS_CLOSE = {Status.INTERNAL: 1011, Status.RESOURCE_EXHAUSTED: 1013, Status.UNAVAILABLE: 1013}  # else 1008
LANGUAGES = {"en": "english"}


class _RedactClientProtocols(logging.Filter):
    """aiohttp logs the WebSocket subprotocols a client offered and the server does not speak;
    some clients carry their token in one (`Bearer, <token>`): secrets never reach the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "Client protocols" in record.msg and len(record.args or ()) == 3:
            record.args = (record.args[0], f"<{len(record.args[1])} redacted>", record.args[2])
        return True


REDACT_CLIENT_PROTOCOLS = _RedactClientProtocols()


class FormError(ServiceError):
    """A form field the server cannot honour: OpenAI's errors name it in `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(Status.INVALID_ARGUMENT, f"{param}: {message}")
        self.param = param


def _openai_error_body(e: ServiceError) -> dict:
    return {"error": {"message": e.message, "type": OPENAI_ERROR_TYPES.get(e.status, "invalid_request_error"),
                      "param": e.param if isinstance(e, FormError) else None, "code": e.status.name.lower()}}


def _openai_error(e: ServiceError) -> web.Response:
    return web.json_response(_openai_error_body(e), status=e.status.http)


def _flag(value: str, param: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", ""):
        raise FormError(param, f"expected true or false, not {value!r}")
    return value.lower() in ("true", "1")


@dataclass(frozen=True)
class TranscriptionRequest:
    """The form of one `POST /v1/audio/transcriptions`, checked."""
    audio: bytes
    config: asr_pb2.RecognitionConfig
    response_format: str
    words: bool
    segments: bool
    stream: bool


def _transcription_request(form, served: list[str]) -> TranscriptionRequest:
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise FormError("file", "an audio file is required (multipart field `file`)")
    model = form.get("model", "")
    if model and model not in served:
        raise FormError("model", f"{model[:100]!r} is not served; this server serves {', '.join(map(repr, served))}")
    response_format = form.get("response_format", "json")
    if response_format not in RESPONSE_FORMATS:
        raise FormError("response_format", f"one of {', '.join(RESPONSE_FORMATS)}, not {response_format!r}")
    granularities = form.getall("timestamp_granularities[]", [])
    if unknown := set(granularities) - {"word", "segment"}:
        raise FormError("timestamp_granularities[]", f"word or segment, not {', '.join(sorted(unknown))}")
    try:
        temperature = float(form.get("temperature", 0))  # accepted; a beam search has no temperature
    except ValueError:
        temperature = -1.0
    if not 0 <= temperature <= 1:
        raise FormError("temperature", "a number between 0 and 1")
    config = asr_pb2.RecognitionConfig(model=model, language_code=form.get("language", ""),
                                       enable_word_time_offsets=True,
                                       format_numbers=_flag(form.get("format_numbers", ""), "format_numbers"))
    return TranscriptionRequest(upload.file.read(), config, response_format, "word" in granularities,
                                "segment" in granularities or not granularities,
                                _flag(form.get("stream", ""), "stream"))


def _timestamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def _segments(finals: list[FinalResult]) -> list[dict]:
    """One segment per utterance (the stream's finals), in OpenAI's verbose_json shape."""
    out, start = [], 0.0
    for final in finals:
        best = final.hypotheses[0]
        if best.text:
            begin = best.words[0].start if best.words else start
            out.append({"id": len(out), "seek": 0, "start": begin, "end": final.end, "text": best.text,
                        "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0,
                        "no_speech_prob": 0.0, "confidence": best.confidence})
        start = final.end
    return out


def _body(req: TranscriptionRequest, finals: list[FinalResult], language: str) -> web.Response:
    text = " ".join(f.hypotheses[0].text for f in finals if f.hypotheses[0].text)
    seconds = next((f.billed_seconds for f in reversed(finals) if f.billed_seconds is not None), 0.0)
    segments = _segments(finals)
    match req.response_format:
        case "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        case "srt" | "vtt":
            sep, head = (",", "") if req.response_format == "srt" else (".", "WEBVTT\n\n")
            cues = [(f"{i + 1}\n" if sep == "," else "") + f"{_timestamp(s['start'], sep)} --> "
                    f"{_timestamp(s['end'], sep)}\n{s['text']}\n" for i, s in enumerate(segments)]
            return web.Response(text=head + "\n".join(cues), content_type="text/plain" if sep == "," else "text/vtt")
        case "verbose_json":
            body = {"task": "transcribe", "language": LANGUAGES.get(language, language), "duration": seconds,
                    "text": text}
            if req.segments:
                body["segments"] = segments
            if req.words:
                body["words"] = [{"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence}
                                 for f in finals for w in f.hypotheses[0].words]
            return web.json_response(body)
    return web.json_response({"text": text, "usage": {"type": "duration", "seconds": round(seconds)}})


class HttpApi:
    def __init__(self, speech: Speech, cfg: ServerConfig, tokens: Tokens | None) -> None:
        self.speech = speech
        self.cfg = cfg
        self.tokens = tokens
        logging.getLogger("aiohttp.websocket").addFilter(REDACT_CLIENT_PROTOCOLS)
        self.connections = ConnectionGuard(cfg.max_connections, cfg.read_timeout_seconds)
        # an upload is the file and its form fields (a few KB more)
        self.app = web.Application(client_max_size=cfg.max_file_bytes + FORM_SLACK,
                                   middlewares=[self.connections.middleware])
        self.app.add_routes([
            web.get("/", self.page), web.get("/healthz", self.healthz), web.get("/readyz", self.readyz),
            web.get("/v1/models", self.models), web.post("/v1/audio/transcriptions", self.transcriptions),
            web.get("/v1/stream", self.websocket)])
        self.runner: web.AppRunner | None = None

    async def start(self, ssl_context) -> int:
        # Calls in flight had the drain's grace already (service.server): the rest are cut at once.
        # A client that disconnects cancels its call: a long file stops costing the server.
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5,
                                    handler_cancellation=True)
        await self.runner.setup()
        self.listener = await asyncio.get_running_loop().create_server(
            self.connections.protocol_factory(self.runner.server), self.cfg.host, self.cfg.http_port,
            ssl=ssl_context, reuse_port=False)
        self.connections.start()
        return self.listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.listener.close()
        await self.connections.stop()
        await self.runner.cleanup()

    def _authorize(self, request: web.Request, allow_query: bool = False) -> str:
        """Checks the caller's token (where tokens are configured); whom per-client limits count."""
        if self.tokens is None:
            return client_id(None, request.remote or "")
        query = request.query.get("access_token", "") if allow_query else ""  # browsers cannot set WebSocket headers
        for token in (bearer(request.headers.getall("Authorization", [])), query):
            if self.tokens.valid(token):
                return client_id(token, "")
        raise ServiceError(Status.UNAUTHENTICATED, "missing or invalid bearer token")

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.speech.draining:
            return web.Response(text="draining\n", status=503)
        return web.Response(text="ready\n")

    async def models(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except ServiceError as e:
            return _openai_error(e)
        return web.json_response({"object": "list", "data": [
            {"id": served.name, "object": "model", "created": 0, "owned_by": "ctc-asr", "version": served.spec.version,
             "sample_rate_hertz": served.spec.features.sample_rate, "language_code": served.spec.language_code}
            for served in self.speech.models.served()]})

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        sse: web.StreamResponse | None = None
        try:
            async with self.speech.call("HTTPTranscriptions"):
                client = self._authorize(request)
                try:
                    form = await asyncio.wait_for(request.post(), self.cfg.http_body_timeout_seconds)
                except TimeoutError:
                    raise ServiceError(Status.DEADLINE_EXCEEDED, "the request body did not arrive within "
                                       f"{self.cfg.http_body_timeout_seconds:g} s (--http-body-timeout-seconds)"
                                       ) from None
                except web.HTTPRequestEntityTooLarge:
                    raise ServiceError(Status.OUT_OF_RANGE, "the request is larger than "
                                       f"{self.cfg.max_file_bytes} bytes (--max-file-bytes)") from None
                except ConnectionError:  # the client went away mid-upload: its call, not our fault
                    raise ServiceError(Status.CANCELLED, "the client closed the connection") from None
                except (ValueError, HttpProcessingError) as e:  # aiohttp's parser: a malformed form body
                    raise ServiceError(Status.INVALID_ARGUMENT, "the body is not a well-formed multipart/form-data "
                                       f"(or urlencoded) form: {_first_line(e)[:200]}") from None
                req = _transcription_request(form, self.speech.models.names())
                events = self.speech.transcribe_file("HTTPTranscriptions", client, req.config, req.audio)
                if req.stream:
                    sse = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                    await sse.prepare(request)
                    await self._stream_sse(sse, events)
                    return sse
                finals = [e async for e in events if isinstance(e, FinalResult)]
                return _body(req, finals, req.config.language_code or "en")
        except ServiceError as e:
            if sse is None:
                return _openai_error(e)
            await _send_event(sse, _openai_error_body(e))  # the status line is sent: the error goes in the stream
            await sse.write_eof()
            return sse

    @staticmethod
    async def _stream_sse(response: web.StreamResponse, events) -> None:
        """OpenAI's streamed transcription: a `transcript.text.delta` event per utterance (deltas
        only append, as OpenAI's clients join them), then `transcript.text.done`."""
        texts = []
        async for event in events:
            if isinstance(event, FinalResult) and (text := event.hypotheses[0].text):
                await _send_event(response, {"type": "transcript.text.delta", "delta": (" " if texts else "") + text})
                texts.append(text)
        await _send_event(response, {"type": "transcript.text.done", "text": " ".join(texts)})
        await response.write_eof()

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = _WebSocket(max_msg_size=self.cfg.max_chunk_bytes)
        try:
            async with self.speech.call("WebSocketStream"):
                client = self._authorize(request, allow_query=True)  # before the upgrade: a refusal is a 401
                await ws.prepare(request)
                with self.speech.admission.stream_slot("WebSocketStream", client):
                    messages = self.speech.idle_limited(_ws_messages(ws))
                    first = await anext(messages, None)
                    if first is None or first.type != WSMsgType.TEXT:
                        raise ServiceError(Status.INVALID_ARGUMENT, "the first message must be a text message: a "
                                           "StreamingRecognitionConfig in protobuf's JSON mapping")
                    try:
                        sc = json_format.Parse(first.data, asr_pb2.StreamingRecognitionConfig())
                    except json_format.ParseError as e:
                        raise ServiceError(Status.INVALID_ARGUMENT, f"the config message: {e}") from None
                    async for event in self.speech.stream(sc, _ws_audio(messages)):
                        message = streaming_response(event, sc.config.enable_word_time_offsets)
                        await ws.send_str(json_format.MessageToJson(message, indent=None))
            await ws.close(code=1000)
        except ServiceError as e:
            if not ws.prepared:
                return _openai_error(e)
            await ws.close(code=WS_CLOSE.get(e.status, 1008), message=_close_reason(e))
        return ws


def _close_reason(e: ServiceError) -> bytes:
    return f"{e.status.name}: {e.message}".encode()[:123]  # a close frame's reason has room for 123 bytes


class _WebSocket(web.WebSocketResponse):
    """aiohttp ends a stream whose message is over `max_msg_size` itself, with 1009 and no reason:
    ours says which limit, as every other error does."""

    def too_big(self) -> ServiceError:
        return ServiceError(Status.OUT_OF_RANGE, f"a message over {self._max_msg_size} bytes (--max-chunk-bytes)")

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            code, message = 1008, _close_reason(self.too_big())
        return await super().close(code=code, message=message, drain=drain)


async def _send_event(response: web.StreamResponse, event: dict) -> None:
    await response.write(f"data: {json.dumps(event)}\n\n".encode())


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


async def _ws_messages(ws: _WebSocket):
    """The client's data messages; its going away ends the call as CANCELLED."""
    while True:
        message = await ws.receive()
        if message.type == WSMsgType.ERROR and getattr(message.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
            raise ws.too_big()
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            raise ServiceError(Status.CANCELLED, "the client closed the connection")
        yield message


async def _ws_audio(messages):
    """Binary messages are audio; an empty one, the text `{"type": "end"}` or a close ends it."""
    async for message in messages:
        if message.type == WSMsgType.BINARY:
            if not message.data:
                return
            yield message.data
            continue
        try:
            end = json.loads(message.data) == {"type": "end"}
        except ValueError:
            end = False
        if not end:
            raise ServiceError(Status.INVALID_ARGUMENT, 'after the config, only binary audio messages '
                               'and the text {"type": "end"}')
        return
