"""The speech service without a transport: admission, draining, validation, the
stream loop, call outcomes and metrics.

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
import enum
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ctc_asr.v1 import asr_pb2
from service import canary
from service.audio import AudioError, Encoding, PcmStream, decode_unary, raw_format, STREAM_ENCODINGS
from service.batcher import ModelBatcher
from service.config import ServerConfig
from service.decoder import Hypothesis
from service.metrics import Metrics
from service.options import RequestOptions, recognition_options
from service.recognizer import HALF_CLOSE, Progress, Recognizer, StreamState
from service.text import format_numbers

log = logging.getLogger(__name__)


class Status(enum.Enum):
    """Call outcomes, named as gRPC's status codes; `http` is the status an HTTP API answers with."""
    OK = 200
    CANCELLED = 499
    INVALID_ARGUMENT = 400
    DEADLINE_EXCEEDED = 504
    OUT_OF_RANGE = 413
    RESOURCE_EXHAUSTED = 429
    UNAUTHENTICATED = 401
    UNAVAILABLE = 503
    INTERNAL = 500

    @property
    def http(self) -> int:
        return self.value

    @property
    def client_fault(self) -> bool:
        return self in (Status.INVALID_ARGUMENT, Status.OUT_OF_RANGE, Status.UNAUTHENTICATED)


class ServiceError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    """A unary call's result."""
    hypotheses: list[Hypothesis]
    seconds: float
    canary: asr_pb2.CanaryScore | None


def _formatted(hyps: list[Hypothesis], opts: RequestOptions) -> list[Hypothesis]:
    """Spoken numbers as digits in the transcripts; the words (and their times) stay as spoken."""
    return [h._replace(text=format_numbers(h.text)) for h in hyps] if opts.format_numbers else hyps


class Speech:
    def __init__(self, recognizer: Recognizer, batcher: ModelBatcher, pool: ThreadPoolExecutor, metrics: Metrics,
                 cfg: ServerConfig) -> None:
        self.recognizer = recognizer
        self.batcher = batcher
        self.spec = recognizer.spec
        self.metrics = metrics
        self.cfg = cfg
        self._pool = pool
        self.canaries = canary.CanaryTracker(metrics, self.spec.name, cfg.max_canary_sets)
        self.active_streams = 0  # admitted streams of every transport (grpc.aio's own limit is unreliable)
        self.draining = False

    async def close(self) -> None:
        await self.batcher.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @contextlib.asynccontextmanager
    async def call(self, method: str):
        """One call of any transport: refused while draining; exceptions become `ServiceError`
        (never leaking internals); the outcome is counted under `method`."""
        status = Status.OK
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
        except asyncio.CancelledError:
            status = Status.CANCELLED
            raise
        except Exception:
            status = Status.INTERNAL
            log.exception("%s failed", method)
            raise ServiceError(status, "internal error") from None
        finally:
            self.metrics.requests.labels(method, status.name).inc()

    @contextlib.asynccontextmanager
    async def stream_slot(self):
        """Admission of a stream: at most --max-concurrent-streams at once, over all transports."""
        if self.active_streams >= self.cfg.max_concurrent_streams:
            raise ServiceError(Status.RESOURCE_EXHAUSTED, "too many concurrent streams "
                               f"(at most {self.cfg.max_concurrent_streams}); retry with backoff")
        self.active_streams += 1
        self.metrics.active_streams.inc()
        try:
            yield
        finally:
            self.active_streams -= 1
            self.metrics.active_streams.dec()

    def _score_canary(self, opts: RequestOptions, transcript: str) -> asr_pb2.CanaryScore:
        result = canary.score(opts.canary_reference, transcript, opts.canary_set)
        self.canaries.record(result)
        return result

    def _recognize(self, samples: np.ndarray, opts: RequestOptions) -> list[Hypothesis]:
        stream = self.recognizer.new_stream(opts.decode)
        self.recognizer.accept(stream, samples)
        return self.recognizer.finish(stream).finals[0].hypotheses

    async def _decode_file(self, config: asr_pb2.RecognitionConfig, audio: bytes) -> tuple[np.ndarray, float]:
        c = config
        samples, seconds = await self._run(decode_unary, audio, c.encoding, c.sample_rate_hertz,
                                           c.audio_channel_count, self.spec.features.sample_rate,
                                           self.cfg.max_unary_audio_seconds)
        if seconds > self.cfg.max_unary_audio_seconds:
            raise ServiceError(Status.OUT_OF_RANGE, f"audio is {seconds:.1f} s; at most "
                               f"{self.cfg.max_unary_audio_seconds:g} s in one request (stream longer audio)")
        return samples, seconds

    async def recognize(self, config: asr_pb2.RecognitionConfig, audio: bytes) -> Transcript:
        """A whole file or buffer of audio, decoded as one utterance."""
        started = time.perf_counter()
        opts = recognition_options(config, self.spec)
        samples, seconds = await self._decode_file(config, audio)
        self.metrics.audio_seconds.inc(seconds)
        hyps = await self._run(self._recognize, samples, opts)
        score = self._score_canary(opts, hyps[0].text) if opts.canary_reference else None
        self._observe_unary("Recognize", opts, started, seconds)
        return Transcript(_formatted(hyps, opts), seconds, score)

    def _observe_unary(self, method: str, opts: RequestOptions, started: float, seconds: float) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.request_duration.labels(method, opts.traffic).observe(elapsed)
        self.metrics.real_time_factor.labels(opts.traffic).observe(elapsed / max(seconds, 1e-3))

    async def transcribe_file(self, method: str, config: asr_pb2.StreamingRecognitionConfig,
                              audio: bytes) -> AsyncIterator[Event]:
        """A whole file decoded as a stream (utterances end at silences), as fast as the model goes."""
        started = time.perf_counter()
        samples, seconds = await self._decode_file(config.config, audio)
        rate = self.spec.features.sample_rate
        sc = asr_pb2.StreamingRecognitionConfig()
        sc.CopyFrom(config)
        sc.config.encoding, sc.config.sample_rate_hertz, sc.config.audio_channel_count = Encoding.FLOAT32, rate, 1

        async def pieces():
            for start in range(0, len(samples), rate):  # a second at a time, batched with live streams
                yield samples[start:start + rate].tobytes()

        async for event in self.stream(sc, pieces()):
            yield event
        self._observe_unary(method, recognition_options(config.config, self.spec), started, seconds)

    async def _advance(self, stream: StreamState, chunks: list[np.ndarray], progress: Progress) -> Progress:
        """Model steps through the batcher, decoding on the worker pool, chunk after chunk."""
        for chunk in chunks:  # the batcher decodes each batch's outputs (Recognizer.decode_many)
            logprobs, state = await self.batcher.step(chunk, stream.model_state, stream.decode)
            await self._run(self.recognizer.consume, stream, logprobs, state, progress)
        return progress

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
        """Audio messages in, events out: interim results as chunks decode, a final at each
        endpoint and at the end of the audio."""
        opts = recognition_options(sc.config, self.spec)
        if sc.config.encoding not in STREAM_ENCODINGS:
            raise AudioError("config.encoding must be LINEAR16, FLOAT32, MULAW or ALAW for streaming "
                             "(send audio files whole)")
        pcm = PcmStream(raw_format(sc.config.encoding, sc.config.sample_rate_hertz,
                                   sc.config.audio_channel_count or 1), self.spec.features.sample_rate)
        stream = self.recognizer.new_stream(opts.decode, pcm, self.cfg.endpoint)
        first_audio_at, sent_result, transcript = None, False, []

        def finals(progress: Progress, last: bool) -> list[Event]:
            out: list[Event] = [SpeechBegin()] if progress.speech_began else []
            for final in progress.finals:
                transcript.append(final.hypotheses[0].text)
                ends_call = last or sc.single_utterance
                score = None
                if ends_call and opts.canary_reference:
                    score = self._score_canary(opts, " ".join(t for t in transcript if t))
                out.append(FinalResult(_formatted(final.hypotheses, opts), final.reason, final.end,
                                       pcm.samples_in / pcm.fmt.sample_rate if ends_call else None, score))
                if final.reason != HALF_CLOSE:
                    out.append(SpeechEnd())
                if sc.single_utterance:
                    out.append(EndOfSingleUtterance())
                    break
            return out

        async for data in audio:
            if len(data) > self.cfg.max_chunk_bytes:
                raise ServiceError(Status.OUT_OF_RANGE, f"an audio message of {len(data)} bytes; "
                                   f"at most {self.cfg.max_chunk_bytes} per message")
            arrived = time.perf_counter()
            first_audio_at = first_audio_at or arrived
            samples = pcm.accept(data)
            if pcm.samples_in / pcm.fmt.sample_rate > self.cfg.max_stream_audio_seconds:
                raise ServiceError(Status.OUT_OF_RANGE, "stream audio exceeds "
                                   f"{self.cfg.max_stream_audio_seconds:g} s")
            progress = await self._advance(stream, self.recognizer.take_chunks(stream, samples), Progress())
            for event in finals(progress, last=False):
                yield event
            if progress.finals:
                self.metrics.final_latency.labels(opts.traffic).observe(time.perf_counter() - arrived)
                if sc.single_utterance:
                    return
            elif sc.interim_results and progress.frames and (partial := self.recognizer.partial(stream))[0].text:
                hyp, stability = partial
                yield InterimResult(hyp._replace(words=()), stability, self.recognizer.heard(stream))
                self.metrics.partial_latency.labels(opts.traffic).observe(time.perf_counter() - arrived)
            else:
                continue
            if not sent_result:
                self.metrics.first_result_latency.labels(opts.traffic).observe(time.perf_counter() - first_audio_at)
                sent_result = True
        half_closed = time.perf_counter()
        samples = pcm.finish()
        self.metrics.audio_seconds.inc(pcm.samples_in / pcm.fmt.sample_rate)
        if first_audio_at is None:
            return
        chunks = self.recognizer.take_chunks(stream, samples)
        last = self.recognizer.take_last(stream)
        progress = await self._advance(stream, chunks + ([last] if len(last) else []), Progress())
        await self._run(self.recognizer.close, stream, progress)
        for event in finals(progress, last=True):
            yield event
        self.metrics.final_latency.labels(opts.traffic).observe(time.perf_counter() - half_closed)
        if not sent_result:
            self.metrics.first_result_latency.labels(opts.traffic).observe(time.perf_counter() - first_audio_at)
