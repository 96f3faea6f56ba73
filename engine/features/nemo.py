"""`nemo` (NeMo's AudioToMelSpectrogramPreprocessor): pre-emphasis over the stream, a symmetric
Hann window centred on each hop, Slaney filters, ln(x + 2^-24), dither off."""

import numpy as np

from engine.features.config import FeatureConfig
from engine.features.mel import MelFrontEnd, slaney_filterbank

LOG_GUARD = 2.0 ** -24


class Nemo(MelFrontEnd):
    def __init__(self, cfg: FeatureConfig, warp: float = 1.0) -> None:
        super().__init__(cfg, warp)
        self.lead_in = cfg.win_length // 2
        self.stream_preemph = cfg.preemph

    def window(self, cfg: FeatureConfig) -> np.ndarray:
        # torch.hann_window(periodic=False); centring it in n_fft leaves the power as it is
        return np.hanning(cfg.win_length).astype(np.float32)

    def filterbank(self, cfg: FeatureConfig, warp: float) -> np.ndarray:
        return slaney_filterbank(cfg)

    def compress(self, power: np.ndarray) -> np.ndarray:
        return np.log(power + LOG_GUARD).astype(np.float32)
