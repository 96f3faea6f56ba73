"""A model directory's `features`: which front-end kind, and its settings (validated here, once)."""

from dataclasses import dataclass

NORMALIZE = ("none", "per_feature", "utterance")


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
        from engine.features import KINDS  # the table imports the kinds, which name this class

        if self.kind not in KINDS:
            raise ValueError(f"features.kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"features.normalize must be one of {', '.join(NORMALIZE)}, not {self.normalize!r}")
        KINDS[self.kind].check(self)

    @property
    def width(self) -> int:
        """Values per frame: mel bins, or a waveform frame's samples."""
        from engine.features import KINDS

        return KINDS[self.kind].width(self)

    @classmethod
    def whisper(cls, **changes) -> "FeatureConfig":
        """Whisper's front-end settings (n_fft 400, hop 160, 80 Slaney bins over 0-8 kHz)."""
        return cls(**{"kind": "whisper", "n_fft": 400, "win_length": 400, "hop_length": 160, "n_mels": 80,
                      "fmin": 0.0, "fmax": 8000.0, "log_floor": 1e-10, **changes})
