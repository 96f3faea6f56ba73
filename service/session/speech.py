"""The speech service without a transport: draining, the models' table, admission, whole files
and streams as calls, their outcomes counted.

gRPC (`service.transports.grpc_api`), HTTP and WebSocket (`service.transports.http_api`) are thin
adapters: they turn their wire messages into a `RecognitionConfig` and audio bytes, call
`recognize`, `transcribe_file` or `stream`, and turn the events (`service.session.events`) back
into their own messages. Errors leave here as `ServiceError`, whose `Status` names are gRPC's
(the adapters map them to gRPC codes, HTTP statuses and WebSocket close codes). CPU work (model
steps, decoding) runs on a bounded thread pool so the event loop keeps serving other calls; the
loop each stream runs is `service.session.stream`'s.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from ctc_asr.v1 import asr_pb2
from engine.endpointing import EndpointConfig
from engine.segmenting import SegmentRule
from service.config import ServerConfig
from service.errors import ServiceError, Status
from service.lifecycle.served import ModelTable, ServedModel
from service.metrics import Metrics
from service.session.admission import Admission
from service.session.audio import AudioError, decode_unary, open_file
from service.session.events import Event, FinalResult, Transcript
from service.session.options import recognition_options
from service.session.second_passes import SecondPasses
from service.session.segments import FileJob, file_finals, too_long
from service.session.stream import StreamContext, StreamSession, float32_config, seconds_of

log = logging.getLogger(__name__)


class Speech:
    def __init__(self, models: list[ServedModel], pool: ThreadPoolExecutor, metrics: Metrics,
                 cfg: ServerConfig) -> None:
        """`models`: the first is the default."""
        self.models = ModelTable(models)
        self.metrics = metrics
        self.cfg = cfg
        self._pool = pool
        # Whole files are decoded from their containers one at a time on a thread of their own, so
        # that however many arrive, the workers stay free for live streams.
        self._files = ThreadPoolExecutor(1, thread_name_prefix="asr-file")
        self.in_flight = 0  # calls of every kind, for draining
        self.draining = False
        self._files_running: set[asyncio.Task] = set()  # the tasks decoding long files (`end_files`)
        self._files_ended = False
        self.admission = Admission(cfg, metrics, self.models.busy_ratio)
        self._second_passes = SecondPasses(cfg.max_pending_second_passes,
                                           lambda model, size: metrics.second_pass_batch.labels(model).observe(size))
        self._streams = StreamContext(cfg, metrics, self.admission, self._run, self._second_passes)

    @property
    def spec(self):
        """The default model's (GetModelInfo without a name, the HTTP API's sample rate)."""
        return self.models.default.spec

    async def close(self) -> None:
        await self.models.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._files.shutdown(wait=False, cancel_futures=True)
        self._second_passes.close()

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

    async def _decode_file(self, config: asr_pb2.RecognitionConfig, audio: bytes,
                           rate: int) -> tuple[np.ndarray, float]:
        c = config
        samples, seconds = await asyncio.get_running_loop().run_in_executor(
            self._files, decode_unary, audio, c.encoding, c.sample_rate_hertz, c.audio_channel_count, rate,
            self.cfg.max_unary_audio_seconds)
        if seconds > self.cfg.max_unary_audio_seconds:
            raise ServiceError(Status.OUT_OF_RANGE, f"audio is {seconds:.1f} s; at most "
                               f"{self.cfg.max_unary_audio_seconds:g} s in one Recognize request "
                               "(--max-unary-audio-seconds); send longer files to LongRunningRecognize or "
                               "POST /v1/audio/transcriptions, or stream them")
        return samples, seconds

    async def recognize(self, method: str, client: str, config: asr_pb2.RecognitionConfig,
                        audio: bytes) -> Transcript:
        """A file of up to --max-unary-audio-seconds as one utterance (cut only past
        --endpoint-max-utterance-seconds), decoded as a stream, as fast as the model goes, through
        the batcher a second at a time, so that it shares the model with live streams."""
        with self.admission.unary_slot(method, client):
            with self.models.using(config.model) as served:
                started = time.perf_counter()
                traffic = recognition_options(config, served.spec).traffic  # a bad config is refused before decoding
                rate = served.spec.features.sample_rate
                samples, seconds = await self._decode_file(config, audio, rate)
                session = StreamSession(self._streams, served, float32_config(config, rate),
                                        replace(self.cfg.endpoint, enabled=False), live=False,
                                        shadow=self.models.shadow(served.name))
                finals = [e async for e in session.run(seconds_of(samples, rate)) if isinstance(e, FinalResult)]
                self._observe(method, traffic, served.name, started, seconds)
        spoken = [f for f in finals if f.hypotheses[0].text] or finals[-1:]
        return Transcript(spoken, finals[-1].billed_seconds, finals[-1].canary)

    async def transcribe_file(self, method: str, client: str, config: asr_pb2.RecognitionConfig, audio: bytes,
                              progress: Callable[[float], None] = lambda share: None) -> AsyncIterator[FinalResult]:
        """A file of up to --max-file-audio-seconds cut at pauses, its segments decoded side by side
        (`service.session.segments`): a final per segment, in order; `progress(share)` of the audio
        done. A labelled canary is not scored here (Recognize and streams score them)."""
        with self.admission.unary_slot(method, client):
            with self.models.using(config.model) as served:
                started = time.perf_counter()
                traffic = recognition_options(config, served.spec).traffic
                most, c = self.cfg.max_file_audio_seconds, config
                file = await asyncio.get_running_loop().run_in_executor(
                    self._files, open_file, audio, c.encoding, c.sample_rate_hertz, c.audio_channel_count,
                    served.spec.features.sample_rate, most)
                if file.seconds > most:
                    file.close()
                    raise too_long(file.seconds, most)
                job = FileJob(self._streams, served, config, replace(self.cfg.endpoint, enabled=False),
                              SegmentRule.within(self.cfg.endpoint.max_utterance_s), self.cfg.file_parallel_segments,
                              self._files)
                task = asyncio.current_task()
                self._files_running.add(task)
                try:
                    async for final in file_finals(job, file, most, progress):
                        yield final
                except asyncio.CancelledError:
                    if not self._files_ended:
                        raise
                    task.uncancel()
                    raise ServiceError(Status.UNAVAILABLE, "the server is shutting down and this file was not done "
                                       "within its drain (--grace-seconds); retry (another replica)") from None
                finally:
                    self._files_running.discard(task)
                self._observe(method, traffic, served.name, started, final.billed_seconds)

    async def end_files(self) -> None:
        """At the end of a drain: files still being decoded end with UNAVAILABLE (their callers
        told so, rather than cut off), before the transports close."""
        self._files_ended = True
        for task in self._files_running:
            task.cancel()
        if self._files_running:
            await asyncio.wait(set(self._files_running), timeout=1.0)

    def _observe(self, method: str, traffic: str, model: str, started: float, seconds: float) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.request_duration.labels(method, traffic, model).observe(elapsed)
        self.metrics.real_time_factor.labels(traffic, model).observe(elapsed / max(seconds, 1e-3))

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
        with self.models.using(sc.config.model) as served:
            session = StreamSession(self._streams, served, sc, self.cfg.endpoint, live=True,
                                    shadow=self.models.shadow(served.name))
            async for event in session.run(audio):
                yield event

    async def transcribe_quietly(self, served: ServedModel, sc: asr_pb2.StreamingRecognitionConfig,
                                 messages: AsyncIterator[bytes], endpoint: EndpointConfig) -> str:
        """The transcript of audio no one waits for (self-checks, shadow decodes of canaries):
        decoded like a whole file, with no canary scored and no audio counted."""
        session = StreamSession(self._streams, served, sc, endpoint, live=False, counted=False)
        finals = [e async for e in session.run(messages) if isinstance(e, FinalResult)]
        return " ".join(t for f in finals if (t := f.hypotheses[0].text))

