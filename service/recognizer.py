"""One utterance's path through front-end, model and decoder.

`Recognizer` holds what all streams share (the ONNX session, the front-end
settings, the decoder); `StreamState` holds everything one stream owns: its
PCM remainder, front-end samples, model state and beams. Every chunk moves all
of them forward once; nothing already consumed is recomputed. A unary request
is a stream that receives all its audio at once, so both RPCs run the same code.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.audio import PcmStream
from service.decoder import CtcDecoder, DecodeOptions, DecodeState, Hypothesis
from service.features import LogMel, StreamingFeatures, logmel_utterance
from service.model_session import ModelSession


@dataclass
class StreamState:
    pcm: PcmStream | None
    features: StreamingFeatures
    model_state: list[np.ndarray]
    pending: np.ndarray  # feature frames not yet run through the model
    decode: DecodeState
    samples: int = 0  # at the model's rate


class Recognizer:
    def __init__(self, session: ModelSession, decoder: CtcDecoder,
                 on_inference: Callable[[float], None] = lambda s: None,
                 on_decode: Callable[[float], None] = lambda s: None) -> None:
        self.session = session
        self.spec = session.spec
        self.decoder = decoder
        self.logmel = LogMel(session.spec.features)
        self._on_inference = on_inference
        self._on_decode = on_decode

    def new_stream(self, opts: DecodeOptions, pcm: PcmStream | None = None) -> StreamState:
        return StreamState(pcm, StreamingFeatures(self.logmel), self.session.initial_state(),
                           np.zeros((0, self.spec.features.n_mels), np.float32), self.decoder.start(opts))

    def accept(self, stream: StreamState, samples: np.ndarray) -> int:
        """Runs every whole model chunk now available; returns the new output frames."""
        stream.samples += len(samples)
        stream.pending = np.concatenate([stream.pending, stream.features.accept(samples)])
        whole = len(stream.pending) - len(stream.pending) % self.spec.chunk_frames
        return self._run(stream, whole)

    def finish(self, stream: StreamState) -> list[Hypothesis]:
        """Flushes the front-end, runs the last, silence-padded chunk, and finalizes the beams."""
        stream.pending = self._pad(np.concatenate([stream.pending, stream.features.flush()]))
        self._run(stream, len(stream.pending))
        started = time.perf_counter()
        hyps = self.decoder.finish(stream.decode)
        self._on_decode(time.perf_counter() - started)
        return hyps

    def utterance_logprobs(self, samples: np.ndarray) -> np.ndarray:
        """Log-probabilities (T', V) of a whole utterance in one model call (offline evaluation)."""
        frames = self._pad(logmel_utterance(self.logmel, samples))
        return self.session.step(frames, self.session.initial_state())[0]

    def _pad(self, frames: np.ndarray) -> np.ndarray:
        """Silence frames up to a multiple of the subsampling factor, as training does."""
        short = -len(frames) % self.spec.subsampling_factor
        return np.concatenate([frames, np.tile(self.logmel.silence_frame, (short, 1))]) if short else frames

    def partial(self, stream: StreamState) -> Hypothesis:
        return self.decoder.partial(stream.decode)

    def _run(self, stream: StreamState, n: int) -> int:
        if n == 0:
            return 0
        started = time.perf_counter()
        logprobs, stream.model_state = self.session.step(stream.pending[:n], stream.model_state)
        decoding = time.perf_counter()
        self._on_inference(decoding - started)
        stream.pending = stream.pending[n:]
        self.decoder.advance(stream.decode, logprobs)
        self._on_decode(time.perf_counter() - decoding)
        return len(logprobs)
