"""`htk` (ours): HTK-scale filters, natural log over a floor; models normalize inside."""

import numpy as np

from engine.features.config import FeatureConfig
from engine.features.mel import MelFrontEnd


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mel_filterbank(cfg: FeatureConfig, warp: float = 1.0) -> np.ndarray:
    """(n_fft//2+1, n_mels) triangular HTK-scale filters. `warp` scales the filter
    frequencies (vocal-tract-length perturbation in training; 1 when serving)."""
    bins = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    if warp != 1.0:  # piecewise-linear VTLP (Jaitly & Hinton 2013): fmin..fmax maps onto itself
        knee = 0.8 * cfg.fmax * min(warp, 1.0) / warp
        edges = np.where(edges <= knee, edges * warp,
                         cfg.fmax - (cfg.fmax - knee * warp) / (cfg.fmax - knee) * (cfg.fmax - edges))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


class Htk(MelFrontEnd):
    warpable = True

    def window(self, cfg: FeatureConfig) -> np.ndarray:
        return np.hanning(cfg.win_length + 2)[1:-1].astype(np.float32)

    def filterbank(self, cfg: FeatureConfig, warp: float) -> np.ndarray:
        return mel_filterbank(cfg, warp)

    def compress(self, power: np.ndarray) -> np.ndarray:
        return np.log(power + self.cfg.log_floor)
