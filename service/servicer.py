"""The gRPC Speech service: request validation, the stream loop, errors and metrics.

CPU work (model steps, decoding) runs on a bounded thread pool so the event
loop keeps serving other calls.
"""

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service import canary
from service.audio import RAW_WIDTH, AudioError, PcmStream, decode_unary, raw_format
from service.beam_search import vocabulary_kind
from service.config import ServerConfig
from service.decoder import Hypothesis
from service.metrics import Metrics
from service.options import RequestOptions, recognition_options
from service.batcher import ModelBatcher
from service.recognizer import HALF_CLOSE, Progress, Recognizer, StreamState

log = logging.getLogger(__name__)
Event = asr_pb2.StreamingRecognizeResponse.SpeechEventType
SPEECH_BEGIN, SPEECH_END = Event.SPEECH_ACTIVITY_BEGIN, Event.SPEECH_ACTIVITY_END
END_OF_SINGLE_UTTERANCE = Event.END_OF_SINGLE_UTTERANCE


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def _alternatives(hyps: list[Hypothesis], word_offsets: bool) -> list[asr_pb2.SpeechRecognitionAlternative]:
    out = []
    for h in hyps:
        alt = asr_pb2.SpeechRecognitionAlternative(transcript=h.text, confidence=h.confidence)
        if word_offsets:
            alt.words.extend(asr_pb2.WordInfo(word=w.word, start_time=_duration(w.start),
                                              end_time=_duration(w.end), confidence=w.confidence)
                             for w in h.words)
        out.append(alt)
    return out


class SpeechServicer(asr_pb2_grpc.SpeechServicer):
    def __init__(self, recognizer: Recognizer, batcher: ModelBatcher, pool: ThreadPoolExecutor, metrics: Metrics,
                 cfg: ServerConfig) -> None:
        self.recognizer = recognizer
        self.batcher = batcher
        self.spec = recognizer.spec
        self.metrics = metrics
        self.cfg = cfg
        self._pool = pool
        self.canaries = canary.CanaryTracker(metrics, self.spec.name, cfg.max_canary_sets)
        self._streams = 0  # admitted StreamingRecognize calls (grpc.aio's own limit is unreliable)

    async def close(self) -> None:
        await self.batcher.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @contextlib.asynccontextmanager
    async def _call(self, method: str, context: grpc.aio.ServicerContext):
        """Maps exceptions to status codes (never leaking internals) and counts the outcome."""
        code = grpc.StatusCode.OK
        try:
            yield
        except RequestError as e:
            code = e.code
            await context.abort(code, str(e))
        except AudioError as e:
            code = grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(e))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:
            if isinstance(e, grpc.aio.AbortError):
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            await context.abort(code, "internal error")
        finally:
            self.metrics.requests.labels(method, code.name).inc()

    def _score_canary(self, opts: RequestOptions, transcript: str) -> asr_pb2.CanaryScore:
        result = canary.score(opts.canary_reference, transcript, opts.canary_set)
        self.canaries.record(result)
        return result

    def _recognize(self, samples: np.ndarray, opts: RequestOptions) -> list[Hypothesis]:
        stream = self.recognizer.new_stream(opts.decode)
        self.recognizer.accept(stream, samples)
        return self.recognizer.finish(stream).finals[0].hypotheses

    async def Recognize(self, request, context):
        started = time.perf_counter()
        async with self._call("Recognize", context):
            opts = recognition_options(request.config, self.spec)
            c = request.config
            samples, seconds = await self._run(decode_unary, request.audio_content, c.encoding,
                                               c.sample_rate_hertz, c.audio_channel_count,
                                               self.spec.features.sample_rate)
            if seconds > self.cfg.max_unary_audio_seconds:
                raise RequestError(grpc.StatusCode.OUT_OF_RANGE,
                                   f"audio is {seconds:.1f} s; Recognize accepts at most "
                                   f"{self.cfg.max_unary_audio_seconds:g} s (use StreamingRecognize)")
            self.metrics.audio_seconds.inc(seconds)
            hyps = await self._run(self._recognize, samples, opts)
            response = asr_pb2.RecognizeResponse(total_billed_time=_duration(seconds))
            response.results.add(alternatives=_alternatives(hyps, opts.word_offsets),
                                 result_end_time=_duration(seconds))
            if opts.canary_reference:
                response.canary_score.CopyFrom(self._score_canary(opts, hyps[0].text))
            elapsed = time.perf_counter() - started
            self.metrics.request_duration.labels("Recognize", opts.traffic).observe(elapsed)
            self.metrics.real_time_factor.labels(opts.traffic).observe(elapsed / max(seconds, 1e-3))
            return response

    async def StreamingRecognize(self, request_iterator, context):
        async with self._call("StreamingRecognize", context):
            if self._streams >= self.cfg.max_concurrent_streams:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many concurrent streams "
                                   f"(at most {self.cfg.max_concurrent_streams}); retry with backoff")
            self._streams += 1
            self.metrics.active_streams.inc()
            try:
                async for response in self._stream(request_iterator):
                    yield response
            finally:
                self._streams -= 1
                self.metrics.active_streams.dec()

    async def _advance(self, stream: StreamState, chunks: list[np.ndarray], progress: Progress) -> Progress:
        """Model steps through the batcher, decoding on the worker pool, chunk after chunk."""
        for chunk in chunks:  # the batcher decodes each batch's outputs (Recognizer.decode_many)
            logprobs, state = await self.batcher.step(chunk, stream.model_state, stream.decode)
            await self._run(self.recognizer.consume, stream, logprobs, state, progress)
        return progress

    async def _with_idle_timeout(self, requests):
        """The request stream, ended with OUT_OF_RANGE when the client goes quiet (a stuck
        client must not hold a stream slot forever)."""
        iterator = aiter(requests)
        while True:
            try:
                yield await asyncio.wait_for(anext(iterator), self.cfg.stream_idle_timeout_seconds)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise RequestError(grpc.StatusCode.OUT_OF_RANGE, "audio timeout: nothing received for "
                                   f"{self.cfg.stream_idle_timeout_seconds:g} s") from None

    async def _stream(self, requests):
        requests = self._with_idle_timeout(requests)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("streaming_request") != "streaming_config":
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "the first message must carry streaming_config (and no audio)")
        sc = first.streaming_config
        opts = recognition_options(sc.config, self.spec)
        if sc.config.encoding not in RAW_WIDTH:
            raise AudioError("config.encoding must be LINEAR16 or FLOAT32 for streaming "
                             "(send WAV/FLAC files with Recognize)")
        pcm = PcmStream(raw_format(sc.config.encoding, sc.config.sample_rate_hertz,
                                   sc.config.audio_channel_count or 1), self.spec.features.sample_rate)
        stream = self.recognizer.new_stream(opts.decode, pcm, self.cfg.endpoint)
        first_audio_at, sent_result, transcript = None, False, []

        def finals_responses(progress: Progress, last: bool) -> list[asr_pb2.StreamingRecognizeResponse]:
            out = []
            if progress.speech_began:
                out.append(asr_pb2.StreamingRecognizeResponse(speech_event_type=SPEECH_BEGIN))
            for final in progress.finals:
                transcript.append(final.hypotheses[0].text)
                response = asr_pb2.StreamingRecognizeResponse(
                    results=[asr_pb2.StreamingRecognitionResult(
                        alternatives=_alternatives(final.hypotheses, opts.word_offsets), is_final=True,
                        result_end_time=_duration(final.end))], endpoint_reason=final.reason)
                ends_call = last or sc.single_utterance
                if ends_call:
                    response.total_billed_time.CopyFrom(_duration(pcm.samples_in / pcm.fmt.sample_rate))
                    if opts.canary_reference:
                        response.canary_score.CopyFrom(self._score_canary(opts, " ".join(t for t in transcript if t)))
                out.append(response)
                if final.reason != HALF_CLOSE:
                    out.append(asr_pb2.StreamingRecognizeResponse(speech_event_type=SPEECH_END))
                if sc.single_utterance:
                    out.append(asr_pb2.StreamingRecognizeResponse(speech_event_type=END_OF_SINGLE_UTTERANCE))
                    break
            return out

        async for request in requests:
            if request.WhichOneof("streaming_request") != "audio_content":
                raise AudioError("streaming_config may only be sent once, in the first message")
            if len(request.audio_content) > self.cfg.max_chunk_bytes:
                raise RequestError(grpc.StatusCode.OUT_OF_RANGE, f"audio_content of {len(request.audio_content)} "
                                   f"bytes; at most {self.cfg.max_chunk_bytes} per message")
            arrived = time.perf_counter()
            first_audio_at = first_audio_at or arrived
            samples = pcm.accept(request.audio_content)
            if pcm.samples_in / pcm.fmt.sample_rate > self.cfg.max_stream_audio_seconds:
                raise RequestError(grpc.StatusCode.OUT_OF_RANGE, "stream audio exceeds "
                                   f"{self.cfg.max_stream_audio_seconds:g} s")
            progress = await self._advance(stream, self.recognizer.take_chunks(stream, samples), Progress())
            for response in finals_responses(progress, last=False):
                yield response
            if progress.finals:
                self.metrics.final_latency.labels(opts.traffic).observe(time.perf_counter() - arrived)
                if sc.single_utterance:
                    return
            elif sc.interim_results and progress.frames and (partial := self.recognizer.partial(stream))[0].text:
                hyp, stability = partial
                yield asr_pb2.StreamingRecognizeResponse(results=[asr_pb2.StreamingRecognitionResult(
                    alternatives=_alternatives([hyp], False), is_final=False, stability=stability,
                    result_end_time=_duration(self.recognizer.heard(stream)))])
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
        for response in finals_responses(progress, last=True):
            yield response
        self.metrics.final_latency.labels(opts.traffic).observe(time.perf_counter() - half_closed)
        if not sent_result:
            self.metrics.first_result_latency.labels(opts.traffic).observe(time.perf_counter() - first_audio_at)

    async def GetModelInfo(self, request, context):
        async with self._call("GetModelInfo", context):
            s = self.spec
            step = s.features.hop_length / s.features.sample_rate
            return asr_pb2.ModelInfo(
                name=s.name, version=s.version, sample_rate_hertz=s.features.sample_rate, tokens=s.tokens,
                subsampling_factor=s.subsampling_factor, chunk_duration=_duration(s.chunk_frames * step),
                lookahead=_duration(s.lookahead_frames * step), provider=self.recognizer.session.provider,
                has_language_model=self.recognizer.decoder.has_lm, parameters=s.parameters,
                language_code=s.language_code, decoder=self.recognizer.decoder.engine_description,
                frontend=s.features.kind + ("" if s.features.normalize == "none" else f", {s.features.normalize} "
                                            "normalization per window"),
                vocabulary=vocabulary_kind(list(s.tokens)), streaming=s.streaming_description)
