"""The speech service without a transport: draining, validation, the stream loop,
call outcomes and metrics (admission is `service.admission`'s).

gRPC (`service.servicer`), HTTP and WebSocket (`service.http_api`) are thin
adapters: they turn their wire messages into a `RecognitionConfig` and audio
bytes, call `recognize` or `stream`, and turn the events back into their own
messages. Errors leave here as `ServiceError`, whose `Status` names are gRPC's
(the adapters map them to gRPC codes, HTTP statuses and WebSocket close codes).
CPU work (model steps, decoding) runs on a bounded thread pool so the event
loop keeps serving other calls.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ctc_asr.v1 import asr_pb2
from service import canary
from service.audio import AudioError, Encoding, PcmStream, decode_unary, raw_format, STREAM_ENCODINGS
from service.admission import Admission, StreamClock
from service.batcher import ModelBatcher
from service.config import ServerConfig
from service.decoder import Hypothesis
from service.endpointing import EndpointConfig
from service.errors import ServiceError, Status
from service.metrics import Metrics
from service.options import RequestOptions, recognition_options
from service.recognizer import HALF_CLOSE, SPEECH_BEGAN, Progress, Recognizer, StreamState
from service.text import format_numbers

log = logging.getLogger(__name__)


# Events of a stream, in the order a client must see them.
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


def _formatted(hyps: list[Hypothesis], opts: RequestOptions) -> list[Hypothesis]:
    """Spoken numbers as digits in the transcripts; the words (and their times) stay as spoken."""
    return [h._replace(text=format_numbers(h.text)) for h in hyps] if opts.format_numbers else hyps


def float32_config(config: asr_pb2.RecognitionConfig, rate: int) -> asr_pb2.StreamingRecognitionConfig:
    """A stream of decoded samples: mono float32 at `rate`, the rest of `config` as it was."""
    sc = asr_pb2.StreamingRecognitionConfig(config=config)
    sc.config.encoding, sc.config.sample_rate_hertz, sc.config.audio_channel_count = Encoding.FLOAT32, rate, 1
    return sc


def seconds_of(samples: np.ndarray, rate: int) -> AsyncIterator[bytes]:
    """float32 samples as messages of a second each (how whole files go through the batcher)."""
    async def pieces():
        for start in range(0, len(samples), rate):
            yield samples[start:start + rate].tobytes()
    return pieces()


async def _reading(audio: AsyncIterator[bytes], clock: StreamClock) -> AsyncIterator[bytes]:
    """The client's messages, the clock knowing when the stream waits for the next one."""
    audio = aiter(audio)
    while True:
        clock.reading_since = time.perf_counter()
        try:
            data = await anext(audio)
        except StopAsyncIteration:
            return
        finally:
            clock.reading_since = None
        yield data


async def replay(messages: list[bytes]) -> AsyncIterator[bytes]:
    for message in messages:
        yield message


def quiet_config(sc: asr_pb2.StreamingRecognitionConfig) -> asr_pb2.StreamingRecognitionConfig:
    """The same audio format and decoding, without the canary label or number formatting."""
    quiet = asr_pb2.StreamingRecognitionConfig()
    quiet.CopyFrom(sc)
    quiet.config.ClearField("canary")
    quiet.config.format_numbers = False
    return quiet


@dataclass(eq=False)
class ServedModel:
    """One model a server serves, under the name requests ask for: its streams batch only together.
    `users` counts the calls decoding with it, so that a replaced model is freed only once they end."""
    name: str
    directory: Path
    recognizer: Recognizer
    batcher: ModelBatcher
    canaries: canary.CanaryTracker
    users: int = 0

    @property
    def spec(self):
        return self.recognizer.spec

    async def close(self) -> None:
        await self.batcher.stop()


@dataclass(frozen=True)
class ShadowJob:
    """A canary the serving model answered, for a staged candidate to decode again."""
    sc: asr_pb2.StreamingRecognitionConfig  # the audio's format; no canary label, numbers as spoken
    messages: list[bytes]
    endpoint: EndpointConfig
    score: asr_pb2.CanaryScore  # the serving model's
    reference: str


class Speech:
    def __init__(self, models: list[ServedModel], pool: ThreadPoolExecutor, metrics: Metrics,
                 cfg: ServerConfig) -> None:
        """`models`: the first is the default."""
        self.models = {m.name: m for m in models}
        self._default_name = models[0].name
        # Staged candidates by model name (`service.model_registry`): they are offered canaries.
        self.candidates: dict[str, Callable[[ShadowJob], None]] = {}
        self.metrics = metrics
        self.cfg = cfg
        self._pool = pool
        # Whole files are decoded from their containers one at a time on a thread of their own, so
        # that however many arrive, the workers stay free for live streams.
        self._files = ThreadPoolExecutor(1, thread_name_prefix="asr-file")
        self.in_flight = 0  # calls of every kind, for draining
        self.draining = False
        self.admission = Admission(cfg, metrics, self.busy_ratio)

    @property
    def default(self) -> ServedModel:
        return self.models[self._default_name]

    @property
    def spec(self):
        """The default model's (GetModelInfo without a name, the HTTP API's sample rate)."""
        return self.default.spec

    def model(self, name: str) -> ServedModel:
        """The model a request names ("" for the default); INVALID_ARGUMENT naming those served."""
        if not name:
            return self.default
        if name not in self.models:
            raise ServiceError(Status.INVALID_ARGUMENT, f"model {name[:100]!r} is not served; this server serves "
                               + ", ".join(repr(n) for n in self.models))
        return self.models[name]

    @contextlib.contextmanager
    def using(self, name: str):
        """The model a request names, held for the call: a reload switches new calls only."""
        served = self.model(name)
        served.users += 1
        try:
            yield served
        finally:
            served.users -= 1

    async def close(self) -> None:
        for served in self.models.values():
            await served.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._files.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @contextlib.asynccontextmanager
    async def call(self, method: str, expired: Callable[[], bool] = lambda: False):
        """One call of any transport: refused while draining; exceptions become `ServiceError`
        (never leaking internals); the outcome is counted under `method` (a cancelled call whose
        deadline has passed, `expired()`, as DEADLINE_EXCEEDED)."""
        status = Status.OK
        self.in_flight += 1
        try:
            if self.draining:
                raise ServiceError(Status.UNAVAILABLE, "the server is shutting down; retry (another replica)")
            yield
        except ServiceError as e:
            status = e.status
            raise
        except AudioError as e:
            status = Status.INVALID_ARGUMENT
            raise ServiceError(status, str(e)) from None
        except (asyncio.CancelledError, GeneratorExit):  # a stream's generator is closed when its call ends
            status = Status.DEADLINE_EXCEEDED if expired() else Status.CANCELLED
            raise
        except Exception:
            status = Status.INTERNAL
            log.exception("%s failed", method)
            raise ServiceError(status, "internal error") from None
        finally:
            self.in_flight -= 1
            self.metrics.requests.labels(method, status.name).inc()

    @contextlib.asynccontextmanager
    async def stream_call(self, method: str, client: str, expired: Callable[[], bool] = lambda: False):
        """A streaming call (`call`) holding one of the streams' slots (`Admission.stream_slot`)."""
        async with self.call(method, expired):
            with self.admission.stream_slot(method, client):
                yield

    def busy_ratio(self) -> float:
        """The busiest model's share of the last seconds (asr_model_busy_ratio): they share the machine."""
        return max(served.batcher.busy_ratio() for served in self.models.values())

    @staticmethod
    def _score_canary(served: ServedModel, opts: RequestOptions, transcript: str) -> asr_pb2.CanaryScore:
        result = canary.score(opts.canary_reference, transcript, opts.canary_set)
        served.canaries.record(result)
        return result

    async def _decode_file(self, config: asr_pb2.RecognitionConfig, audio: bytes,
                           rate: int) -> tuple[np.ndarray, float]:
        c = config
        samples, seconds = await asyncio.get_running_loop().run_in_executor(
            self._files, decode_unary, audio, c.encoding, c.sample_rate_hertz, c.audio_channel_count, rate,
            self.cfg.max_unary_audio_seconds)
        if seconds > self.cfg.max_unary_audio_seconds:
            raise ServiceError(Status.OUT_OF_RANGE, f"audio is {seconds:.1f} s; at most "
                               f"{self.cfg.max_unary_audio_seconds:g} s in one request (stream longer audio)")
        return samples, seconds

    async def _file_events(self, method: str, client: str, config: asr_pb2.RecognitionConfig, audio: bytes,
                           endpoint: EndpointConfig) -> AsyncIterator[Event]:
        """A whole file decoded as a stream, as fast as the model goes, through the batcher a
        second at a time, so that it shares the model with live streams instead of holding it."""
        with self.admission.unary_slot(method, client):
            with self.using(config.model) as served:
                started = time.perf_counter()
                traffic = recognition_options(config, served.spec).traffic  # a bad config is refused before decoding
                rate = served.spec.features.sample_rate
                samples, seconds = await self._decode_file(config, audio, rate)
                sc = float32_config(config, rate)
                async for event in self._decode(served, sc, seconds_of(samples, rate), endpoint, live=False):
                    yield event
                elapsed = time.perf_counter() - started
                self.metrics.request_duration.labels(method, traffic, served.name).observe(elapsed)
                self.metrics.real_time_factor.labels(traffic, served.name).observe(elapsed / max(seconds, 1e-3))

    async def recognize(self, method: str, client: str, config: asr_pb2.RecognitionConfig,
                        audio: bytes) -> Transcript:
        """A whole file as one utterance (cut only past --endpoint-max-utterance-seconds)."""
        one_utterance = replace(self.cfg.endpoint, enabled=False)
        finals = [e async for e in self._file_events(method, client, config, audio, one_utterance)
                  if isinstance(e, FinalResult)]
        spoken = [f for f in finals if f.hypotheses[0].text] or finals[-1:]
        return Transcript(spoken, finals[-1].billed_seconds, finals[-1].canary)

    async def transcribe_file(self, method: str, client: str, config: asr_pb2.RecognitionConfig,
                              audio: bytes) -> AsyncIterator[Event]:
        """A whole file whose utterances end at silences, as a stream's do."""
        async for event in self._file_events(method, client, config, audio, self.cfg.endpoint):
            yield event

    async def _advance(self, served: ServedModel, stream: StreamState, chunks: list[np.ndarray], progress: Progress,
                       live: bool) -> Progress:
        """Model steps through the model's batcher, decoding on the worker pool, chunk after chunk."""
        for chunk in chunks:  # the batcher decodes each batch's outputs (Recognizer.decode_many)
            logprobs, state = await served.batcher.step(chunk, stream.model_state, stream.decode, live)
            await self._run(served.recognizer.consume, stream, logprobs, state, progress)
        return progress

    @staticmethod
    def _front_end(recognizer: Recognizer, stream: StreamState, data: bytes) -> list[np.ndarray]:
        """Bytes -> resampled samples -> feature chunks ready for the model (on the pool)."""
        return recognizer.take_chunks(stream, stream.pcm.accept(data))

    @staticmethod
    def _front_end_last(recognizer: Recognizer, stream: StreamState) -> list[np.ndarray]:
        chunks = recognizer.take_chunks(stream, stream.pcm.finish())
        last = recognizer.take_last(stream)
        return chunks + ([last] if len(last) else [])

    async def idle_limited(self, iterator: AsyncIterator):
        """A client's messages, ended with OUT_OF_RANGE when the client goes quiet (a stuck
        client must not hold a stream slot forever)."""
        iterator = aiter(iterator)
        while True:
            try:
                yield await asyncio.wait_for(anext(iterator), self.cfg.stream_idle_timeout_seconds)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ServiceError(Status.OUT_OF_RANGE, "audio timeout: nothing received for "
                                   f"{self.cfg.stream_idle_timeout_seconds:g} s") from None

    async def stream(self, sc: asr_pb2.StreamingRecognitionConfig, audio: AsyncIterator[bytes]) -> AsyncIterator[Event]:
        """A live stream: audio messages in, events out (interim results as chunks decode, a
        final at each endpoint and at the end of the audio), latencies and lag measured."""
        with self.using(sc.config.model) as served:
            async for event in self._decode(served, sc, audio, self.cfg.endpoint, live=True):
                yield event

    async def transcribe_quietly(self, served: ServedModel, sc: asr_pb2.StreamingRecognitionConfig,
                                 messages: AsyncIterator[bytes], endpoint: EndpointConfig) -> str:
        """The transcript of audio no one waits for (self-checks, shadow decodes of canaries):
        decoded like a whole file, with no canary scored and no audio counted."""
        finals = [e async for e in self._decode(served, sc, messages, endpoint, live=False, counted=False)
                  if isinstance(e, FinalResult)]
        return " ".join(t for f in finals if (t := f.hypotheses[0].text))

    async def _decode(self, served: ServedModel, sc: asr_pb2.StreamingRecognitionConfig,
                      audio: AsyncIterator[bytes], endpoint: EndpointConfig, live: bool,
                      counted: bool = True) -> AsyncIterator[Event]:
        recognizer = served.recognizer
        opts = recognition_options(sc.config, served.spec)
        if sc.config.encoding not in STREAM_ENCODINGS:
            raise AudioError("config.encoding must be LINEAR16, FLOAT32, MULAW or ALAW for streaming "
                             "(send audio files whole)")
        pcm = PcmStream(raw_format(sc.config.encoding, sc.config.sample_rate_hertz,
                                   sc.config.audio_channel_count or 1), served.spec.features.sample_rate)
        # A new stream may build decoder state (an LM for a new weight pair): not on the event loop.
        stream = await self._run(recognizer.new_stream, opts.decode, pcm, endpoint)
        transcript: list[str] = []
        clock = StreamClock(min_message_s=1 / self.cfg.max_messages_per_second)
        sent_result = not live
        next_read = 0.0  # live streams: messages are read at most --max-messages-per-second
        # A labelled canary's audio is kept while a candidate is staged, for it to decode too.
        shadow = self.candidates.get(served.name) if opts.canary_reference else None
        kept: list[bytes] = []

        def events(progress: Progress, last: bool) -> list[Event]:
            out: list[Event] = []
            for item in progress.events:
                if item == SPEECH_BEGAN:
                    out.append(SpeechBegin())
                    continue
                transcript.append(item.hypotheses[0].text)
                ends_call = last or sc.single_utterance
                score = None
                if ends_call and opts.canary_reference:
                    score = self._score_canary(served, opts, " ".join(t for t in transcript if t))
                    if shadow is not None:
                        shadow(ShadowJob(quiet_config(sc), kept, endpoint, score, opts.canary_reference))
                out.append(FinalResult(_formatted(item.hypotheses, opts), item.reason, item.end,
                                       pcm.samples_in / pcm.fmt.sample_rate if ends_call else None, score))
                if item.reason != HALF_CLOSE:
                    out.append(SpeechEnd())
                if sc.single_utterance:
                    out.append(EndOfSingleUtterance())
                    break
            return out

        def observe(out: list[Event], since: float, now: float) -> None:
            nonlocal sent_result
            if not live:
                return
            if any(isinstance(e, FinalResult) for e in out):
                self.metrics.final_latency.labels(opts.traffic, served.name).observe(now - since)
            elif any(isinstance(e, InterimResult) for e in out):
                self.metrics.partial_latency.labels(opts.traffic, served.name).observe(now - since)
            else:
                return
            if not sent_result:
                self.metrics.first_result_latency.labels(opts.traffic, served.name).observe(now - clock.first_audio_at)
                sent_result = True

        try:
            async for data in _reading(audio, clock):
                throttled = 0.0
                if live:  # a flood of tiny messages is read no faster: gRPC's flow control holds the rest
                    now = time.perf_counter()
                    throttled = max(0.0, next_read - now)
                    await asyncio.sleep(throttled)
                    next_read = max(now, next_read) + 1 / self.cfg.max_messages_per_second
                if len(data) > self.cfg.max_chunk_bytes:
                    raise ServiceError(Status.OUT_OF_RANGE, f"an audio message of {len(data)} bytes; "
                                       f"at most {self.cfg.max_chunk_bytes} per message")
                arrived = time.perf_counter()
                if shadow is not None:
                    kept.append(data)
                before = pcm.samples_in
                chunks = await self._run(self._front_end, recognizer, stream, data)
                seconds = (pcm.samples_in - before) / pcm.fmt.sample_rate
                clock.arrived(arrived, seconds)
                if pcm.samples_in / pcm.fmt.sample_rate > self.cfg.max_stream_audio_seconds:
                    raise ServiceError(Status.OUT_OF_RANGE, "stream audio exceeds "
                                       f"{self.cfg.max_stream_audio_seconds:g} s")
                # Audio sent ahead of real time is not live: it fills what live streams leave.
                progress = await self._advance(served, stream, chunks, Progress(), live and clock.live(arrived))
                out = events(progress, last=False)
                if (sc.interim_results and not progress.finals and progress.frames
                        and (partial := recognizer.partial(stream))[0].text):
                    hyp, stability = partial
                    out.append(InterimResult(hyp._replace(words=()), stability, recognizer.heard(stream)))
                done = time.perf_counter()
                if live:
                    clock.processed(done - arrived + throttled, seconds, done)
                    self.admission.check_lag(id(stream), clock)
                observe(out, arrived, done)
                for event in out:
                    yield event
                if progress.finals and sc.single_utterance:
                    return
            if pcm.samples_in == 0:  # no audio, or only empty messages: nothing was said, no results
                pcm.finish()
                return
            half_closed = time.perf_counter()
            progress = await self._advance(served, stream, await self._run(self._front_end_last, recognizer, stream),
                                           Progress(), live)
            await self._run(recognizer.close, stream, progress)
            out = events(progress, last=True)
            observe(out, half_closed, time.perf_counter())
            for event in out:
                yield event
        finally:
            if counted:
                self.metrics.audio_seconds.inc(pcm.samples_in / pcm.fmt.sample_rate)
            if live:
                self.admission.stream_ended(id(stream))
