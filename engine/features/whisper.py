"""`whisper` (Whisper's): Slaney-scale filters, log10, then (x + 4) / 4. Whisper floors each clip
at its own maximum - 8, which a stream cannot know; this kind floors at the fixed `whisper_floor`
instead (models trained for it learn with the same floor)."""

import numpy as np

from engine.features.config import FeatureConfig
from engine.features.mel import MelFrontEnd, slaney_filterbank


class Whisper(MelFrontEnd):
    def window(self, cfg: FeatureConfig) -> np.ndarray:  # torch.hann_window's periodic window, as Whisper's STFT
        return np.hanning(cfg.win_length + 1)[:-1].astype(np.float32)

    def filterbank(self, cfg: FeatureConfig, warp: float) -> np.ndarray:
        return slaney_filterbank(cfg)

    def compress(self, power: np.ndarray) -> np.ndarray:
        log_spec = np.log10(np.maximum(power, self.cfg.log_floor))
        return ((np.maximum(log_spec, self.cfg.whisper_floor) + 4.0) / 4.0).astype(np.float32)
