"""`kaldi` (Kaldi's fbank as kaldi-native-fbank computes it for sherpa-onnx, WeNet and icefall):
per-frame DC removal and pre-emphasis, Povey window, Kaldi mel filters, ln."""

import numpy as np

from engine.features.config import FeatureConfig
from engine.features.mel import MelFrontEnd

EPSILON = float(np.finfo(np.float32).eps)


def kaldi_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """(n_fft//2+1, n_mels) Kaldi's mel filters: triangles on the 1127 ln(1 + f/700) scale,
    evaluated at each bin's mel value; the Nyquist bin gets none."""
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)  # noqa: E731
    edges = np.linspace(mel(cfg.fmin), mel(cfg.fmax), cfg.n_mels + 2)
    bins = mel(np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = np.maximum(0.0, np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)))
    weights[:, -1] = 0.0
    return weights.T.astype(np.float32)


class Kaldi(MelFrontEnd):
    def window(self, cfg: FeatureConfig) -> np.ndarray:  # Povey's: a Hann window to the power 0.85
        n = np.arange(cfg.win_length)
        return ((0.5 - 0.5 * np.cos(2 * np.pi * n / (cfg.win_length - 1))) ** 0.85).astype(np.float32)

    def filterbank(self, cfg: FeatureConfig, warp: float) -> np.ndarray:
        return kaldi_filterbank(cfg)

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """Per frame: DC offset removed, then pre-emphasis (x[-1] := x[0])."""
        frames = frames - frames.mean(axis=1, keepdims=True)
        return frames - self.cfg.preemph * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)

    def compress(self, power: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(power, EPSILON)).astype(np.float32)
