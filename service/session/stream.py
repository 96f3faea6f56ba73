"""One stream's decode, the loop every call runs: audio messages in, events out.

Live streams (`live`) are read at most --max-messages-per-second, their latencies observed and
their lag watched by admission; whole files, self-checks and shadow decodes go through the same
loop as fast as the model goes, filling what live streams leave. A labelled canary is scored at
its last final, and its audio kept for a staged candidate to decode again.
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import numpy as np

from ctc_asr.v1 import asr_pb2
from engine.endpointing import EndpointConfig
from engine.recognizer import HALF_CLOSE, SPEECH_BEGAN, Ending, Final, Progress, Rewrite
from engine.text import format_numbers
from service.config import ServerConfig
from service.errors import ServiceError, Status
from service.lifecycle.served import ServedModel
from service.metrics import Metrics
from service.session import canary
from service.session.admission import Admission, StreamClock
from service.session.audio import STREAM_ENCODINGS, AudioError, Encoding, PcmStream, raw_format
from service.session.events import EndOfSingleUtterance, Event, FinalResult, InterimResult, SpeechBegin, SpeechEnd
from service.session.options import recognition_options
from service.session.second_passes import SecondPasses


@dataclass(frozen=True)
class ShadowJob:
    """A canary the serving model answered, for a staged candidate to decode again."""
    sc: asr_pb2.StreamingRecognitionConfig  # the audio's format; no canary label, numbers as spoken
    messages: list[bytes]
    endpoint: EndpointConfig
    score: asr_pb2.CanaryScore  # the serving model's
    reference: str


@dataclass(frozen=True)
class StreamContext:
    """What every stream of a server shares: its rules, metrics, admission, the worker pool (`run`
    calls a function there) on which front-end and decoding work runs, and where second passes run."""
    cfg: ServerConfig
    metrics: Metrics
    admission: Admission
    run: Callable
    second_passes: SecondPasses


@dataclass
class Processed:
    """One message's outcome, until its finals' second pass (`rewrite`, if any) has run: then its
    events go out, after those of every earlier message."""
    progress: Progress
    interim: InterimResult | None
    arrived: float
    rewrite: asyncio.Future | None
    last: bool = False


def float32_config(config: asr_pb2.RecognitionConfig, rate: int) -> asr_pb2.StreamingRecognitionConfig:
    """A stream of decoded samples: mono float32 at `rate`, the rest of `config` as it was."""
    sc = asr_pb2.StreamingRecognitionConfig(config=config)
    sc.config.encoding, sc.config.sample_rate_hertz, sc.config.audio_channel_count = Encoding.FLOAT32, rate, 1
    return sc


async def seconds_of(samples: np.ndarray, rate: int) -> AsyncIterator[bytes]:
    """float32 samples as messages of a second each (how whole files go through the batcher)."""
    for start in range(0, len(samples), rate):
        yield samples[start:start + rate].tobytes()


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


class StreamSession:
    def __init__(self, ctx: StreamContext, served: ServedModel, sc: asr_pb2.StreamingRecognitionConfig,
                 endpoint: EndpointConfig, live: bool, counted: bool = True,
                 shadow: Callable[[ShadowJob], None] | None = None) -> None:
        """`counted`: the audio counts in asr_audio_seconds_total (not a self-check's or shadow's);
        `shadow`: a staged candidate's intake, offered this stream if it is a labelled canary."""
        self.ctx, self.served, self.sc, self.endpoint = ctx, served, sc, endpoint
        self.live, self.counted = live, counted
        self.opts = recognition_options(sc.config, served.spec)
        if sc.config.encoding not in STREAM_ENCODINGS:
            raise AudioError("config.encoding must be LINEAR16, FLOAT32, MULAW or ALAW for streaming "
                             "(send audio files whole)")
        self.pcm = PcmStream(raw_format(sc.config.encoding, sc.config.sample_rate_hertz,
                                        sc.config.audio_channel_count or 1), served.spec.features.sample_rate)
        self.clock = StreamClock(min_message_s=1 / ctx.cfg.max_messages_per_second)
        self.shadow = shadow if self.opts.canary_reference else None
        self.kept: list[bytes] = []  # a canary's audio, while a candidate is staged
        self.transcript: list[str] = []  # the finals' texts as served
        self.first_transcript: list[str] = []  # and as the first pass heard them (a model with a second pass)
        self.sent_result = not live
        self.next_read = 0.0  # live streams: messages are read at most --max-messages-per-second
        self.state = None  # the recognizer's, made on the pool when the stream starts
        self.processed: deque[Processed] = deque()  # messages whose events wait for a second pass
        self.early: tuple[Ending, asyncio.Future] | None = None  # the utterance gone quiet, and its second pass

    @property
    def seconds(self) -> float:
        """Audio received so far."""
        return self.pcm.samples_in / self.pcm.fmt.sample_rate

    async def run(self, audio: AsyncIterator[bytes]) -> AsyncIterator[Event]:
        recognizer, cfg = self.served.recognizer, self.ctx.cfg
        # A new stream may build decoder state (an LM for a new weight pair): not on the event loop.
        self.state = await self.ctx.run(recognizer.new_stream, self.opts.decode, self.endpoint, self.live)
        try:
            async for data in self._reading(audio):
                if data is None:  # a second pass is done: its events need not wait for the next message
                    async for event in self._ready(wait=False):
                        yield event
                    continue
                throttled = await self._throttle()
                if len(data) > cfg.max_chunk_bytes:
                    raise ServiceError(Status.OUT_OF_RANGE, f"an audio message of {len(data)} bytes; "
                                       f"at most {cfg.max_chunk_bytes} per message")
                arrived = time.perf_counter()
                if self.shadow is not None:
                    self.kept.append(data)
                before = self.seconds
                chunks = await self.ctx.run(self._front_end, data)
                seconds = self.seconds - before
                self.clock.arrived(arrived, seconds)
                if self.seconds > cfg.max_stream_audio_seconds:
                    raise ServiceError(Status.OUT_OF_RANGE, "stream audio exceeds "
                                       f"{cfg.max_stream_audio_seconds:g} s")
                # Audio sent ahead of real time is not live: it fills what live streams leave.
                progress = await self._advance(chunks, self.live and self.clock.live(arrived))
                interim = None
                if (self.sc.interim_results and not progress.finals and progress.frames
                        and (partial := recognizer.partial(self.state))[0].text):
                    hyp, stability = partial
                    interim = InterimResult(hyp._replace(words=()), stability, recognizer.heard(self.state))
                done = time.perf_counter()
                if self.live:  # the first pass's pace: a second pass runs beside the stream, not in it
                    self.clock.processed(done - arrived + throttled, seconds, done)
                    self.ctx.admission.check_lag(id(self), self.clock)
                self.processed.append(Processed(progress, interim, arrived, self._second_pass(progress)))
                ends = bool(progress.finals) and self.sc.single_utterance
                async for event in self._ready(wait=ends):
                    yield event
                if ends:
                    return
            if self.pcm.samples_in == 0:  # no audio, or only empty messages: nothing was said, no results
                self.pcm.finish()
                return
            half_closed = time.perf_counter()
            progress = await self._advance(await self.ctx.run(self._front_end_last), self.live)
            await self.ctx.run(recognizer.close, self.state, progress)
            self.processed.append(Processed(progress, None, half_closed, self._second_pass(progress), last=True))
            async for event in self._ready(wait=True):
                yield event
        finally:
            for waiting in self.processed:  # a client gone: its second passes are not wanted
                if waiting.rewrite is not None:
                    waiting.rewrite.cancel()
            self._drop_early()
            if self.counted:
                self.ctx.metrics.audio_seconds.inc(self.seconds)
            if self.live:
                self.ctx.admission.stream_ended(id(self))

    async def _reading(self, audio: AsyncIterator[bytes]) -> AsyncIterator[bytes | None]:
        """The client's messages, the clock knowing when the stream waits for the next one; None
        whenever a second pass finishes meanwhile, so that the events waiting for it go out then,
        not with the next message."""
        audio = aiter(audio)
        read = None
        try:
            while True:
                self.clock.reading_since = time.perf_counter()
                # `processed` grows only between reads: with none pending now, none finishes during this one
                read = asyncio.ensure_future(anext(audio)) if self.processed else anext(audio)
                while (head := self.processed[0].rewrite if self.processed else None) is not None:
                    done, _ = await asyncio.wait({read, head}, return_when=asyncio.FIRST_COMPLETED)
                    if read in done:
                        break
                    yield None
                try:
                    data = await read
                except StopAsyncIteration:
                    return
                finally:
                    self.clock.reading_since = None
                yield data
        finally:
            if isinstance(read, asyncio.Future) and not read.done():  # the stream ended waiting for the client
                read.cancel()

    async def _throttle(self) -> float:
        """A live stream's flood of tiny messages is read no faster (gRPC's flow control holds the
        rest): the seconds this message waited."""
        if not self.live:
            return 0.0
        now = time.perf_counter()
        throttled = max(0.0, self.next_read - now)
        await asyncio.sleep(throttled)
        self.next_read = max(now, self.next_read) + 1 / self.ctx.cfg.max_messages_per_second
        return throttled

    def _front_end(self, data: bytes) -> list[np.ndarray]:
        """Bytes -> resampled samples -> feature chunks ready for the model (on the pool)."""
        return self.served.recognizer.take_chunks(self.state, self.pcm.accept(data))

    def _front_end_last(self) -> list[np.ndarray]:
        recognizer = self.served.recognizer
        chunks = recognizer.take_chunks(self.state, self.pcm.finish())
        last = recognizer.take_last(self.state)
        return chunks + ([last] if len(last) else [])

    async def _advance(self, chunks: list[np.ndarray], live: bool) -> Progress:
        """Model steps through the model's batcher, decoding on the worker pool, chunk after chunk."""
        progress = Progress()
        for chunk in chunks:  # the batcher decodes each batch's outputs (Recognizer.decode_many)
            logprobs, state = await self.served.batcher.step(chunk, self.state.model_state, self.state.decode, live)
            await self.ctx.run(self.served.recognizer.consume, self.state, logprobs, state, progress)
        return progress

    def _second_pass(self, progress: Progress) -> asyncio.Future | None:
        """The model's second pass over each of the message's finals, started after the stream's
        previous one (None: none due), so that a stream waits for its own and a whole file never
        fills the queue alone; a final stays the first pass's, flagged, while the server sheds load
        or too many wait. A live stream's utterance that goes quiet (`Ending`) has its pass started
        then, and its final takes that pass if it says the same: it is ready at the endpoint,
        and the next utterance's interim results do not wait for it."""
        due: dict[int, tuple[Ending, asyncio.Future] | None] = {}  # the finals, and their utterances' early passes
        for i, item in enumerate(progress.events):
            if isinstance(item, Ending):
                self._start_early(item)
            elif isinstance(item, Final):
                early, self.early = self.early, None
                if item.audio is not None:
                    due[i] = early
        if not due:
            return None
        previous = next((p.rewrite for p in reversed(self.processed) if p.rewrite is not None), None)

        async def rewrite() -> None:
            if previous is not None:
                await previous
            for i, early in due.items():
                progress.events[i] = await self._rewritten(progress.events[i], early)
        return asyncio.ensure_future(rewrite())

    async def _rewritten(self, final: Final, early: tuple[Ending, asyncio.Future] | None) -> Final:
        recognizer, name = self.served.recognizer, self.served.name
        if early is not None:
            ending, running = early
            settled = None
            if ending.holds(final):
                with contextlib.suppress(Exception):  # a pass that failed early runs again below
                    settled = recognizer.settle(final, await running)
            else:
                running.cancel()
            self.ctx.metrics.second_pass_early.labels(name, "unused" if settled is None else "used").inc()
            if settled is not None:
                return settled
        if self._no_room():
            self.ctx.metrics.second_pass_fallbacks.labels(name).inc()
            return replace(recognizer.first_pass_only(final), fell_back=True)
        return await self._pass(final)

    def _no_room(self) -> bool:
        """No second pass now: the server sheds load, or too many wait."""
        return self.ctx.admission.overloaded() or self.ctx.second_passes.full()

    async def _pass(self, final: Final) -> Final:
        return await self.ctx.second_passes.run(self.served.name, self.served.recognizer,
                                                Rewrite(final, self.opts.phrases, self.opts.decode.use_lm))

    def _start_early(self, ending: Ending) -> None:
        """An early second pass (not while there is no room), in place of any earlier one of the
        same utterance (its speaker went on)."""
        self._drop_early()
        if not self._no_room():
            self.early = (ending, asyncio.ensure_future(self._pass(ending.final)))

    def _drop_early(self) -> None:
        if self.early is not None:
            self.early[1].cancel()
            self.ctx.metrics.second_pass_early.labels(self.served.name, "unused").inc()
            self.early = None

    async def _ready(self, wait: bool) -> AsyncIterator[Event]:
        """The events of processed messages, in order, each message's once its second pass is done
        (`wait`: all of them)."""
        while self.processed and (wait or self.processed[0].rewrite is None or self.processed[0].rewrite.done()):
            item = self.processed.popleft()
            if item.rewrite is not None:
                await item.rewrite
            out = self._events(item.progress, item.last) + ([item.interim] if item.interim else [])
            self._observe(out, item.arrived, time.perf_counter())
            for event in out:
                yield event

    def _events(self, progress: Progress, last: bool) -> list[Event]:
        out: list[Event] = []
        opts = self.opts
        for item in progress.events:
            if isinstance(item, Ending):
                continue
            if item == SPEECH_BEGAN:
                out.append(SpeechBegin())
                continue
            self.transcript.append(item.hypotheses[0].text)
            self.first_transcript.append((item.first or item.hypotheses[0]).text)
            ends_call = last or self.sc.single_utterance
            score = self._score() if ends_call and opts.canary_reference else None
            hypotheses = item.hypotheses
            if opts.punctuation and item.written is not None:
                hypotheses = [hypotheses[0]._replace(text=item.written), *hypotheses[1:]]
            elif opts.format_numbers:  # the words (and their times) stay as spoken
                hypotheses = [h._replace(text=format_numbers(h.text)) for h in hypotheses]
            out.append(FinalResult(hypotheses, item.reason, item.end, self.seconds if ends_call else None, score,
                                   item.fell_back))
            if item.reason != HALF_CLOSE:
                out.append(SpeechEnd())
            if self.sc.single_utterance:
                out.append(EndOfSingleUtterance())
                break
        return out

    def _score(self) -> asr_pb2.CanaryScore:
        """A labelled canary's score (its finals as served), recorded for its set, and with a second
        pass the first pass's alone too; a staged candidate gets its audio."""
        def scored(transcript: list[str], pass_name: str) -> asr_pb2.CanaryScore:
            score = canary.score(self.opts.canary_reference, " ".join(t for t in transcript if t),
                                 self.opts.canary_set, pass_name)
            self.served.canaries.record(score)
            return score
        if self.served.recognizer.second_pass is None:
            score = scored(self.transcript, canary.FIRST)
        else:
            scored(self.first_transcript, canary.FIRST)
            score = scored(self.transcript, canary.SECOND)
        if self.shadow is not None:
            self.shadow(ShadowJob(quiet_config(self.sc), self.kept, self.endpoint, score, self.opts.canary_reference))
        return score

    def _observe(self, out: list[Event], since: float, now: float) -> None:
        """A live stream's latencies: to its first result, and of each partial and final."""
        if not self.live:
            return
        metrics, traffic, name = self.ctx.metrics, self.opts.traffic, self.served.name
        if any(isinstance(e, FinalResult) for e in out):
            metrics.final_latency.labels(traffic, name).observe(now - since)
        elif any(isinstance(e, InterimResult) for e in out):
            metrics.partial_latency.labels(traffic, name).observe(now - since)
        else:
            return
        if not self.sent_result:
            metrics.first_result_latency.labels(traffic, name).observe(now - self.clock.first_audio_at)
            self.sent_result = True
