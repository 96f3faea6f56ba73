"""Wyoming (Home Assistant's protocol for local speech services) on `--wyoming-port`: `describe`
answered with `info`, and `transcribe` + `audio-start` / `audio-chunk` / `audio-stop` answered
with `transcript`, streamed as `transcript-start`, a `transcript-chunk` per final (at each
endpoint, as it comes), `transcript`, `transcript-stop`. Each audio session is a stream of
`service.session.speech`, with its admission, limits and metrics (`method="wyoming.transcribe"`).

Events are the `wyoming` package's; they are read here rather than with its reader so that what
a client can make the server hold is bounded (a header line, `data_length` and `payload_length`
up to --max-message-bytes). Wyoming has no authentication (docs/protocols.md)."""

import asyncio
import contextlib
import json
import logging

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info

from ctc_asr.v1 import asr_pb2
from service.errors import ServiceError, Status
from service.session.admission import client_id
from service.session.events import FinalResult
from service.session.options import recognition_options
from service.session.speech import Speech

log = logging.getLogger(__name__)
METHOD = "wyoming.transcribe"
HEADER_BYTES = 64 * 1024  # a header line longer than this ends the connection
ATTRIBUTION = Attribution(name="ctc-asr", url="")


class ProtocolError(Exception):
    """The client broke the framing: the connection ends (after an `error` event)."""


async def read_event(reader: asyncio.StreamReader, most: int) -> Event | None:
    """One event, None at the end of the connection; its data and payload at most `most` bytes."""
    try:
        line = await reader.readline()
    except ValueError:  # past the reader's limit
        raise ProtocolError(f"an event header longer than {HEADER_BYTES} bytes") from None
    if not line:
        return None
    try:
        header = json.loads(line)
        kind, data = header["type"], header.get("data") or {}
        data_length, payload_length = int(header.get("data_length") or 0), int(header.get("payload_length") or 0)
        if not isinstance(kind, str) or not isinstance(data, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ProtocolError("an event header that is not Wyoming's JSON") from None
    if not (0 <= data_length <= most and 0 <= payload_length <= most):
        raise ProtocolError(f"an event of more than {most} bytes (--max-message-bytes)")
    if data_length:
        try:
            more = json.loads(await reader.readexactly(data_length))
            data.update(more)
        except (ValueError, TypeError):
            raise ProtocolError("event data that is not a JSON object") from None
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=kind, data=data, payload=payload)


class EventReader:
    """A connection's events, one read in flight at a time, never cut halfway: a read that an
    ending session or a timeout stops waiting for stays pending for the next, so the next event
    is read from its start (a cancelled read could stop between an event's header and payload)."""

    def __init__(self, reader: asyncio.StreamReader, most: int) -> None:
        self._reader, self._most = reader, most
        self._pending: asyncio.Task | None = None

    def pending(self) -> asyncio.Task:
        """The read in flight, started if there is none; `take` its event once it is done."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(read_event(self._reader, self._most))
        return self._pending

    def take(self) -> Event | None:
        done, self._pending = self._pending, None
        return done.result()

    async def next(self, timeout: float) -> Event | None:
        """The next event (None at the end of the connection); TimeoutError after `timeout` s."""
        await asyncio.wait({self.pending()}, timeout=timeout)
        if not self._pending.done():
            raise TimeoutError
        return self.take()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()


class WyomingServer:
    def __init__(self, speech: Speech) -> None:
        self.speech = speech
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._connection, host, port, limit=HEADER_BYTES)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

    def info(self) -> Info:
        models = [AsrModel(name=m.name, attribution=ATTRIBUTION, installed=True, version=m.spec.version,
                           description=f"{m.spec.name} {m.spec.version} ({m.spec.streaming_description})",
                           languages=[m.spec.language_code]) for m in self.speech.models.served()]
        return Info(asr=[AsrProgram(name="ctc-asr", attribution=ATTRIBUTION, installed=True, version=None,
                                    description="streaming CTC speech recognition", models=models,
                                    supports_transcript_streaming=True)])

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        client = client_id(None, peer[0] if peer else "")
        events = EventReader(reader, self.speech.cfg.max_message_bytes)
        try:
            if len(self._connections) > self.speech.cfg.max_connections:
                raise ProtocolError(f"more than {self.speech.cfg.max_connections} connections (--max-connections)")
            await self._events(events, writer, client)
        except ProtocolError as e:
            with contextlib.suppress(ConnectionError):
                await async_write_event(Error(text=str(e), code="INVALID_ARGUMENT").event(), writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            events.close()
            self._connections.discard(task)
            writer.close()

    async def _events(self, events: EventReader, writer, client: str) -> None:
        """Events until the connection ends; an audio session (audio-start to audio-stop) is one
        stream, answered as it goes. Events of other domains are dropped, as Wyoming asks."""
        transcribe = Transcribe()
        while True:
            try:
                event = await events.next(self.speech.cfg.stream_idle_timeout_seconds)
            except TimeoutError:
                raise ProtocolError(f"nothing received for {self.speech.cfg.stream_idle_timeout_seconds:g} s") from None
            if event is None:
                return
            if Describe.is_type(event.type):
                await async_write_event(self.info().event(), writer)
            elif Transcribe.is_type(event.type):
                transcribe = Transcribe.from_event(event)
            elif AudioStart.is_type(event.type):
                await self._session(AudioStart.from_event(event), transcribe, events, writer, client)
                transcribe = Transcribe()

    async def _session(self, start: AudioStart, transcribe: Transcribe, events: EventReader, writer,
                       client: str) -> None:
        """audio-start .. audio-stop as one stream: a `transcript-chunk` per final as it comes."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

        async def audio():
            while (chunk := await queue.get()) is not None:
                yield chunk

        async def answer() -> list[str]:
            texts = []
            async with self.speech.stream_call(METHOD, client):
                config = asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16,
                                                   sample_rate_hertz=start.rate, audio_channel_count=start.channels,
                                                   language_code=transcribe.language or "", model=transcribe.name or "")
                if start.width != 2:
                    raise ServiceError(Status.INVALID_ARGUMENT, f"audio of {start.width}-byte samples; send 16-bit "
                                       "(width 2)")
                recognition_options(config, self.speech.models.get(config.model).spec)  # refused before it starts
                await async_write_event(TranscriptStart(language=transcribe.language).event(), writer)
                async for event in self.speech.stream(asr_pb2.StreamingRecognitionConfig(config=config), audio()):
                    if isinstance(event, FinalResult) and (text := event.hypotheses[0].text):
                        texts.append(text)
                        await async_write_event(TranscriptChunk(text=text if len(texts) == 1 else " " + text).event(),
                                                writer)
            return texts

        answering = asyncio.create_task(answer())
        try:
            while not answering.done():
                reading = events.pending()
                await asyncio.wait({reading, answering}, timeout=self.speech.cfg.stream_idle_timeout_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    if answering.done():
                        break  # (the read goes on, for the connection's next event)
                    raise ProtocolError(f"nothing received for {self.speech.cfg.stream_idle_timeout_seconds:g} s")
                event = events.take()
                if event is None or AudioStop.is_type(event.type):
                    await queue.put(None)
                    break
                if AudioChunk.is_type(event.type):
                    chunk = AudioChunk.from_event(event)
                    if (chunk.rate, chunk.width, chunk.channels) != (start.rate, start.width, start.channels):
                        raise ProtocolError("an audio-chunk whose rate, width or channels differ from audio-start's")
                    putting = asyncio.create_task(queue.put(chunk.audio))  # waits while the stream catches up
                    await asyncio.wait({putting, answering}, return_when=asyncio.FIRST_COMPLETED)
                    putting.cancel()
            texts = await answering
        except ServiceError as e:
            await async_write_event(Error(text=e.message, code=e.status.name).event(), writer)
            return
        finally:
            answering.cancel()
        await async_write_event(Transcript(text=" ".join(texts), language=transcribe.language).event(), writer)
        await async_write_event(TranscriptStop().event(), writer)
