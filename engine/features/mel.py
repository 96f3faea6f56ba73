"""What the log-mel kinds share: frames of samples, windowed, through an FFT and mel filters,
then each kind's compression (`MelFrontEnd`); and the Slaney-scale filters two kinds use."""

import numpy as np

from engine.features.config import FeatureConfig


def _slaney_hz_to_mel(hz):
    hz = np.asarray(hz, np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz < 1000.0, 3.0 * hz / 200.0, log_part)


def _slaney_mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    return np.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)))


def slaney_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """(n_fft//2+1, n_mels) Slaney-scale, area-normalized filters: librosa's `filters.mel`
    defaults, which Whisper's and NeMo's front-ends use."""
    bins = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(cfg.fmin), _slaney_hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T.astype(np.float32)


class MelFrontEnd:
    """Stateless: whole frames of samples in, log-mel frames (n, n_mels) out. A kind gives its
    `window`, `filterbank` and `compress`, and may `prepare` each frame before the window."""

    lead_in = 0  # zeros a stream starts with (nemo: half a window, as its centred STFT pads)
    stream_preemph = 0.0  # pre-emphasis over the whole stream, before framing (nemo's); kaldi's is per frame
    warpable = False  # whether `warp` (VTLP, a training perturbation) applies to the filters

    def __init__(self, cfg: FeatureConfig, warp: float = 1.0) -> None:
        if warp != 1.0 and not self.warpable:
            raise ValueError("VTLP warping applies to the htk front-end only")
        self.cfg = cfg
        self._window = self.window(cfg)
        self._fbank = self.filterbank(cfg, warp).astype(np.float64)

    @staticmethod
    def check(cfg: FeatureConfig) -> None:
        if not 0 < cfg.hop_length <= cfg.win_length <= cfg.n_fft:
            raise ValueError("need 0 < hop_length <= win_length <= n_fft")
        if not 0 <= cfg.fmin < cfg.fmax <= cfg.sample_rate / 2:
            raise ValueError("need 0 <= fmin < fmax <= sample_rate/2")
        if not 0 <= cfg.preemph < 1:
            raise ValueError("need 0 <= preemph < 1")

    @staticmethod
    def width(cfg: FeatureConfig) -> int:
        return cfg.n_mels

    def window(self, cfg: FeatureConfig) -> np.ndarray:
        raise NotImplementedError

    def filterbank(self, cfg: FeatureConfig, warp: float) -> np.ndarray:
        raise NotImplementedError

    def compress(self, power: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        return frames

    def num_frames(self, num_samples: int) -> int:
        if num_samples < self.cfg.win_length:
            return 0
        return 1 + (num_samples - self.cfg.win_length) // self.cfg.hop_length

    def power(self, samples: np.ndarray) -> np.ndarray:
        """Mel power spectrum (n, n_mels) of the whole frames in `samples`."""
        n = self.num_frames(len(samples))
        idx = np.arange(self.cfg.win_length)[None, :] + self.cfg.hop_length * np.arange(n)[:, None]
        frames = self.prepare(samples[idx]) * self._window
        # In float64, then rounded: float32 matrix products differ in their last bits with the number
        # of rows (BLAS kernels), so a stream's features would depend on how its audio was split.
        return ((np.abs(np.fft.rfft(frames, n=self.cfg.n_fft, axis=1)) ** 2) @ self._fbank).astype(np.float32)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self.num_frames(len(samples)) == 0:
            return np.zeros((0, self.cfg.n_mels), np.float32)
        return self.compress(self.power(samples))

    @property
    def silence_frame(self) -> np.ndarray:
        """The frame of digital silence, used to pad the model's last chunk."""
        return self.compress(np.zeros(self.cfg.n_mels, np.float32))
