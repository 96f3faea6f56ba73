"""One utterance's path through front-end, model and decoder.

`Recognizer` holds what all streams share (the ONNX session, the front-end
settings, the decoder); `StreamState` holds everything one stream owns. A
unary request is a stream that receives all its audio at once, so both RPCs
run the same code.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.audio import PcmStream
from service.decoder import CtcDecoder, DecodeOptions, Hypothesis
from service.features import LogMel, StreamingFeatures
from service.model_session import ModelSession


@dataclass
class StreamState:
    pcm: PcmStream | None
    features: StreamingFeatures
    model_state: list[np.ndarray]
    pending: np.ndarray  # feature frames not yet run through the model
    logprobs: list[np.ndarray] = field(default_factory=list)
    samples: int = 0  # at the model's rate

    @property
    def frames(self) -> int:
        return sum(len(x) for x in self.logprobs)


class Recognizer:
    def __init__(self, session: ModelSession, decoder: CtcDecoder,
                 on_inference: Callable[[float], None] = lambda s: None) -> None:
        self.session = session
        self.spec = session.spec
        self.decoder = decoder
        self.logmel = LogMel(session.spec.features)
        self._on_inference = on_inference

    def new_stream(self, pcm: PcmStream | None = None) -> StreamState:
        return StreamState(pcm, StreamingFeatures(self.logmel), self.session.initial_state(),
                           np.zeros((0, self.spec.features.n_mels), np.float32))

    def accept(self, stream: StreamState, samples: np.ndarray) -> int:
        """Runs every whole model chunk now available; returns new output frames."""
        stream.samples += len(samples)
        stream.pending = np.concatenate([stream.pending, stream.features.accept(samples)])
        whole = len(stream.pending) - len(stream.pending) % self.spec.chunk_frames
        return self._run(stream, whole)

    def finish(self, stream: StreamState) -> int:
        """Flushes the front-end and runs the last, silence-padded chunk."""
        stream.pending = np.concatenate([stream.pending, stream.features.flush()])
        short = -len(stream.pending) % self.spec.subsampling_factor
        if short:
            stream.pending = np.concatenate([stream.pending, np.tile(self.logmel.silence_frame, (short, 1))])
        return self._run(stream, len(stream.pending))

    def _run(self, stream: StreamState, n: int) -> int:
        if n == 0:
            return 0
        started = time.perf_counter()
        logprobs, stream.model_state = self.session.step(stream.pending[:n], stream.model_state)
        self._on_inference(time.perf_counter() - started)
        stream.pending = stream.pending[n:]
        stream.logprobs.append(logprobs)
        return len(logprobs)

    def decode(self, stream: StreamState, opts: DecodeOptions) -> list[Hypothesis]:
        logprobs = (np.concatenate(stream.logprobs) if stream.logprobs
                    else np.zeros((0, len(self.spec.tokens)), np.float32))
        return self.decoder.decode(logprobs, opts)
