"""Front-ends over a stream: the samples that do not yet complete a frame are kept, so feeding
audio in any chunking and then calling `flush` gives exactly the frames of the whole signal. The
same code computes training features, so training and serving cannot drift."""

import numpy as np

from engine.features.config import FeatureConfig
from engine.features.kind import FrontEnd


def normalize_window(cfg: FeatureConfig, window: np.ndarray) -> np.ndarray:
    """`features.normalize` over one model call's frames (T, width)."""
    if cfg.normalize == "per_feature":  # NeMo's normalize_batch: unbiased std, plus 1e-5
        std = window.std(axis=0, ddof=1, keepdims=True) if len(window) > 1 else np.zeros((1, window.shape[1]))
        return ((window - window.mean(axis=0, keepdims=True)) / (std + 1e-5)).astype(np.float32)
    if cfg.normalize == "utterance":  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm
        return ((window - window.mean()) / np.sqrt(window.var() + 1e-7)).astype(np.float32)
    return window


class StreamingFeatures:
    """Per-stream front-end state: the samples not yet covered by a whole frame, and
    the last sample (for stream-wide pre-emphasis, NeMo's)."""

    def __init__(self, logmel: FrontEnd) -> None:
        self._logmel = logmel
        self._pending = np.zeros(logmel.lead_in, np.float32)
        self._last = 0.0

    def accept(self, samples: np.ndarray) -> np.ndarray:
        samples = samples.astype(np.float32, copy=False)
        cfg = self._logmel.cfg
        if cfg.scale != 1.0:
            samples = samples * np.float32(cfg.scale)
        if self._logmel.stream_preemph and len(samples):
            shifted = np.concatenate([[self._last], samples[:-1]]).astype(np.float32)
            self._last = float(samples[-1])
            samples = samples - np.float32(self._logmel.stream_preemph) * shifted
        buf = np.concatenate([self._pending, samples])
        feats = self._logmel(buf)
        self._pending = buf[len(feats) * self._logmel.cfg.hop_length :]
        return feats

    def flush(self) -> np.ndarray:
        """Zero-pads the tail into one last frame so no sample is dropped."""
        if len(self._pending) == 0:
            return np.zeros((0, self._logmel.cfg.width), np.float32)
        tail = np.zeros(self._logmel.cfg.win_length, np.float32)
        tail[: len(self._pending)] = self._pending[: self._logmel.cfg.win_length]
        self._pending = np.zeros(0, np.float32)
        return self._logmel(tail)


def logmel_utterance(logmel: FrontEnd, samples: np.ndarray) -> np.ndarray:
    """Whole-signal features, identical to streaming them and flushing."""
    stream = StreamingFeatures(logmel)
    return np.concatenate([stream.accept(samples), stream.flush()])


def pad_to_multiple(logmel: FrontEnd, frames: np.ndarray, multiple: int) -> np.ndarray:
    """Appends silence frames up to a multiple of `multiple` (the model's subsampling).
    Training and serving both pad this way, so the model's last chunk looks as it did in training."""
    short = -len(frames) % multiple
    return np.concatenate([frames, np.tile(logmel.silence_frame, (short, 1))]) if short else frames
