"""`waveform` (raw samples, wav2vec2-style models): a "frame" is one output step's hop of samples,
so the model's rate and the buffers are counted in frames like the other kinds."""

import numpy as np

from engine.features.config import FeatureConfig


class Waveform:
    lead_in = 0
    stream_preemph = 0.0

    def __init__(self, cfg: FeatureConfig, warp: float = 1.0) -> None:
        if warp != 1.0:
            raise ValueError("VTLP warping applies to the htk front-end only")
        self.cfg = cfg

    @staticmethod
    def check(cfg: FeatureConfig) -> None:
        if cfg.hop_length <= 0 or cfg.win_length != cfg.hop_length:
            raise ValueError("a waveform front-end's win_length is its hop_length (samples per output frame)")

    @staticmethod
    def width(cfg: FeatureConfig) -> int:
        return cfg.hop_length

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.cfg.hop_length

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        n = self.num_frames(len(samples)) * self.cfg.hop_length
        return samples[:n].reshape(-1, self.cfg.hop_length).astype(np.float32)

    @property
    def silence_frame(self) -> np.ndarray:
        return np.zeros(self.cfg.hop_length, np.float32)
