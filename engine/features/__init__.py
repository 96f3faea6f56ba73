"""Front-ends, streaming: samples in, frames (n, width) out.

The kind is declared by a model directory's `features.kind`:
- `htk` (ours: HTK-scale filters, natural log over a floor, normalized inside the model);
- `whisper` (Whisper's: Slaney-scale filters, log10, then (x + 4) / 4). Whisper floors each
  clip at its own maximum - 8, which a stream cannot know; ours floors at the fixed
  `whisper_floor` instead (models trained for this front-end learn with the same floor);
- `nemo` (NeMo's AudioToMelSpectrogramPreprocessor: pre-emphasis, a symmetric Hann window
  centred on each hop, Slaney filters, ln(x + 2^-24), dither off);
- `kaldi` (Kaldi's fbank as kaldi-native-fbank computes it for sherpa-onnx, WeNet and
  icefall: per-frame DC removal and pre-emphasis, Povey window, Kaldi mel filters, ln);
- `waveform` (raw samples, wav2vec2-style models: a "frame" is one output step's hop of
  samples, so the model's rate and the buffers are counted in frames like the others).
`normalize` (none, per_feature: NeMo's mean/std per mel bin; utterance: the Hugging Face
feature extractor's zero mean, unit variance) applies over each model call's window: only
buffered (full-context) models declare it, as NeMo's buffered inference and the chunked
Hugging Face pipeline normalize each buffer.

Frame i covers samples [i*hop, i*hop + win). `StreamingFeatures` keeps the
samples that do not yet complete a frame, so feeding audio in any chunking
and then calling `flush` gives exactly the frames of the whole signal. The
same code computes training features, so training and serving cannot drift.
"""

from dataclasses import dataclass

import numpy as np


KINDS = ("htk", "whisper", "nemo", "kaldi", "waveform")
NORMALIZE = ("none", "per_feature", "utterance")
NEMO_LOG_GUARD = 2.0 ** -24
KALDI_EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class FeatureConfig:
    kind: str = "htk"
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 80
    fmin: float = 20.0
    fmax: float = 7600.0
    log_floor: float = 1e-6  # power floor (htk: added; whisper: clamped at)
    whisper_floor: float = -6.5  # whisper kind: log10 floor in place of the clip maximum - 8
    preemph: float = 0.0  # nemo and kaldi kinds: y[n] = x[n] - preemph * x[n-1]
    scale: float = 1.0  # samples in [-1, 1] are multiplied by this first (Kaldi-trained models: 32768)
    normalize: str = "none"  # over each model call's window: none | per_feature | utterance

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"features.kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"features.normalize must be one of {', '.join(NORMALIZE)}, not {self.normalize!r}")
        if self.kind == "waveform":
            if self.hop_length <= 0 or self.win_length != self.hop_length:
                raise ValueError("a waveform front-end's win_length is its hop_length (samples per output frame)")
            return
        if not 0 < self.hop_length <= self.win_length <= self.n_fft:
            raise ValueError("need 0 < hop_length <= win_length <= n_fft")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError("need 0 <= fmin < fmax <= sample_rate/2")
        if not 0 <= self.preemph < 1:
            raise ValueError("need 0 <= preemph < 1")

    @property
    def width(self) -> int:
        """Values per frame: mel bins, or a waveform frame's samples."""
        return self.hop_length if self.kind == "waveform" else self.n_mels


    @classmethod
    def whisper(cls, **changes) -> "FeatureConfig":
        """Whisper's front-end settings (n_fft 400, hop 160, 80 Slaney bins over 0-8 kHz)."""
        return cls(**{"kind": "whisper", "n_fft": 400, "win_length": 400, "hop_length": 160, "n_mels": 80,
                      "fmin": 0.0, "fmax": 8000.0, "log_floor": 1e-10, **changes})


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


def _slaney_hz_to_mel(hz):
    hz = np.asarray(hz, np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz < 1000.0, 3.0 * hz / 200.0, log_part)


def _slaney_mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    return np.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)))


def slaney_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """(n_fft//2+1, n_mels) Slaney-scale, area-normalized filters: librosa's `filters.mel`
    defaults, which Whisper's front-end uses."""
    bins = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(cfg.fmin), _slaney_hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T.astype(np.float32)


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


class LogMel:
    """Stateless: whole frames of samples in, log-mel frames (n, n_mels) out."""

    lead_in = 0  # zeros a stream starts with (nemo: half a window, as its centred STFT pads)
    stream_preemph = 0.0  # pre-emphasis over the whole stream, before framing (nemo's); kaldi's is per frame

    def __init__(self, cfg: FeatureConfig, warp: float = 1.0) -> None:
        self.cfg = cfg
        if cfg.kind == "nemo":  # torch.hann_window(periodic=False); centring in n_fft leaves the power as is
            self._window = np.hanning(cfg.win_length).astype(np.float32)
            self._fbank = slaney_filterbank(cfg)
            self.lead_in = cfg.win_length // 2
            self.stream_preemph = cfg.preemph
        elif cfg.kind == "kaldi":
            n = np.arange(cfg.win_length)
            self._window = ((0.5 - 0.5 * np.cos(2 * np.pi * n / (cfg.win_length - 1))) ** 0.85).astype(np.float32)
            self._fbank = kaldi_filterbank(cfg)
        elif cfg.kind == "whisper":  # torch.hann_window's periodic window, as Whisper's STFT
            self._window = np.hanning(cfg.win_length + 1)[:-1].astype(np.float32)
            self._fbank = slaney_filterbank(cfg) if warp == 1.0 else None
            if self._fbank is None:
                raise ValueError("VTLP warping applies to the htk front-end only")
        else:
            self._window = np.hanning(cfg.win_length + 2)[1:-1].astype(np.float32)
            self._fbank = mel_filterbank(cfg, warp)

    def num_frames(self, num_samples: int) -> int:
        if num_samples < self.cfg.win_length:
            return 0
        return 1 + (num_samples - self.cfg.win_length) // self.cfg.hop_length

    def power(self, samples: np.ndarray) -> np.ndarray:
        """Mel power spectrum (n, n_mels) of the whole frames in `samples`."""
        n = self.num_frames(len(samples))
        idx = np.arange(self.cfg.win_length)[None, :] + self.cfg.hop_length * np.arange(n)[:, None]
        frames = samples[idx]
        if self.cfg.kind == "kaldi":  # per frame: DC offset removed, then pre-emphasis (x[-1] := x[0])
            frames = frames - frames.mean(axis=1, keepdims=True)
            frames = frames - self.cfg.preemph * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = frames * self._window
        return (np.abs(np.fft.rfft(frames, n=self.cfg.n_fft, axis=1)) ** 2).astype(np.float32) @ self._fbank

    def compress(self, power: np.ndarray) -> np.ndarray:
        if self.cfg.kind == "nemo":
            return np.log(power + NEMO_LOG_GUARD).astype(np.float32)
        if self.cfg.kind == "kaldi":
            return np.log(np.maximum(power, KALDI_EPSILON)).astype(np.float32)
        if self.cfg.kind == "whisper":
            log_spec = np.log10(np.maximum(power, self.cfg.log_floor))
            return ((np.maximum(log_spec, self.cfg.whisper_floor) + 4.0) / 4.0).astype(np.float32)
        return np.log(power + self.cfg.log_floor)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self.num_frames(len(samples)) == 0:
            return np.zeros((0, self.cfg.n_mels), np.float32)
        return self.compress(self.power(samples))

    @property
    def silence_frame(self) -> np.ndarray:
        """The frame of digital silence, used to pad the model's last chunk."""
        return self.compress(np.zeros(self.cfg.n_mels, np.float32))


class Waveform:
    """The `waveform` kind: samples grouped into frames of one hop (an output step)."""

    lead_in = 0
    stream_preemph = 0.0

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.cfg.hop_length

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        n = self.num_frames(len(samples)) * self.cfg.hop_length
        return samples[:n].reshape(-1, self.cfg.hop_length).astype(np.float32)

    @property
    def silence_frame(self) -> np.ndarray:
        return np.zeros(self.cfg.hop_length, np.float32)


FrontEnd = LogMel | Waveform


def frontend(cfg: FeatureConfig) -> FrontEnd:
    """The front-end a model directory's `features` declare."""
    return Waveform(cfg) if cfg.kind == "waveform" else LogMel(cfg)


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
