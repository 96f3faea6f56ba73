"""A whole file, however long, as segments cut at pauses (`engine.segmenting`), decoded side by side.

The file is decoded from its container a block at a time (on the files' thread) and cut as it
goes; up to --file-parallel-segments segments run at once, each a stream of its own through the
model's batcher (so a file goes many times faster than real time, and its steps are batched with
each other's and fill what live streams leave); their finals come out in the file's order, times
counted from its start. Memory: the compressed file, and a few segments' audio. A client that
goes away cancels the segments in flight.
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from ctc_asr.v1 import asr_pb2
from engine.decoder.ctc import Hypothesis
from engine.endpointing import EndpointConfig
from engine.segmenting import Segment, Segmenter, SegmentRule
from service.errors import ServiceError, Status
from service.lifecycle.served import ServedModel
from service.session.audio import NO_SAMPLES, AudioError, FileAudio
from service.session.events import FinalResult
from service.session.stream import StreamContext, StreamSession, float32_config, seconds_of


@dataclass(frozen=True)
class FileJob:
    """One file's decode: where it runs and how it is cut."""
    ctx: StreamContext
    served: ServedModel
    config: asr_pb2.RecognitionConfig
    endpoint: EndpointConfig  # a segment's: one utterance, cut only past its max_utterance
    rule: SegmentRule
    parallel: int
    files: Executor  # where the container is decoded


def _segments(audio: FileAudio, max_seconds: float, rule: SegmentRule) -> Iterator[Segment]:
    """The file's segments, refused once its audio runs past `max_seconds` (whatever its header said)."""
    segmenter, samples = Segmenter(audio.target_rate, rule), 0
    for block in audio.blocks(max_seconds):
        samples += len(block)
        if samples > max_seconds * audio.target_rate:
            raise too_long(samples / audio.target_rate, max_seconds)
        yield from segmenter.accept(block)
    yield from segmenter.finish()


def too_long(seconds: float, max_seconds: float) -> ServiceError:
    return ServiceError(Status.OUT_OF_RANGE, f"audio is {seconds:.1f} s; at most {max_seconds:g} s in one file "
                        "(--max-file-audio-seconds)")


def _shifted(final: FinalResult, seconds: float) -> FinalResult:
    def moved(h: Hypothesis) -> Hypothesis:
        return h._replace(words=tuple(w._replace(start=w.start + seconds, end=w.end + seconds) for w in h.words))
    return replace(final, hypotheses=[moved(h) for h in final.hypotheses], end=final.end + seconds,
                   billed_seconds=None, canary=None)


async def _decode(job: FileJob, segment: Segment) -> list[FinalResult]:
    rate = job.served.spec.features.sample_rate
    config = asr_pb2.RecognitionConfig()
    config.CopyFrom(job.config)
    config.ClearField("canary")  # a file's segments are not canaries
    session = StreamSession(job.ctx, job.served, float32_config(config, rate), job.endpoint, live=False,
                            counted=False)
    return [_shifted(e, segment.start / rate) async for e in session.run(seconds_of(segment.samples, rate))
            if isinstance(e, FinalResult)]


async def file_finals(job: FileJob, audio: FileAudio, max_seconds: float,
                      progress: Callable[[float], None]) -> AsyncIterator[FinalResult]:
    """The file's finals in order, a segment's as soon as it and those before it are done;
    `progress(share)` after each segment; the last final carries the audio's seconds."""
    loop = asyncio.get_running_loop()
    segments = _segments(audio, max_seconds, job.rule)
    rate = job.served.spec.features.sample_rate
    running: deque[tuple[Segment, asyncio.Task]] = deque()
    last: FinalResult | None = None
    end = 0
    try:
        while True:
            while len(running) < job.parallel and (segment := await loop.run_in_executor(job.files, next, segments,
                                                                                       None)) is not None:
                running.append((segment, asyncio.ensure_future(_decode(job, segment))))
            if not running:
                break
            segment, task = running.popleft()
            for final in await task:
                if last is not None:
                    yield last
                last = final
            end = segment.start + len(segment.samples)
            progress(min(1.0, end / rate / max(audio.seconds, 1e-3)))
    finally:
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        await loop.run_in_executor(job.files, segments.close)
        audio.close()
        job.ctx.metrics.audio_seconds.inc(end / rate)
    if last is None:
        raise AudioError(NO_SAMPLES)
    yield replace(last, billed_seconds=end / rate)
