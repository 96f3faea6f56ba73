"""Front-ends: samples in, frames (n, width) out, streaming.

The kind is declared by a model directory's `features.kind`, one class per file:
- `htk` (ours), `whisper` (Whisper's, floored for streaming), `nemo` (NeMo's mel),
  `kaldi` (Kaldi's fbank, as sherpa-onnx, WeNet and icefall compute it): log-mel kinds
  sharing `mel.MelFrontEnd`;
- `waveform` (raw samples, wav2vec2-style models).
`normalize` (none, per_feature: NeMo's mean/std per mel bin; utterance: the Hugging Face
feature extractor's zero mean, unit variance) applies over each model call's window: only
buffered (full-context) models declare it, as NeMo's buffered inference and the chunked
Hugging Face pipeline normalize each buffer.
"""

from engine.features.config import FeatureConfig
from engine.features.htk import Htk
from engine.features.kaldi import Kaldi
from engine.features.kind import FrontEnd
from engine.features.nemo import Nemo
from engine.features.streaming import StreamingFeatures, logmel_utterance, normalize_window, pad_to_multiple
from engine.features.waveform import Waveform
from engine.features.whisper import Whisper

KINDS: dict[str, type[FrontEnd]] = {"htk": Htk, "whisper": Whisper, "nemo": Nemo, "kaldi": Kaldi,
                                    "waveform": Waveform}


def frontend(cfg: FeatureConfig, warp: float = 1.0) -> FrontEnd:
    """The front-end a model directory's `features` declare."""
    return KINDS[cfg.kind](cfg, warp)


__all__ = ["KINDS", "FeatureConfig", "FrontEnd", "StreamingFeatures", "frontend", "logmel_utterance",
           "normalize_window", "pad_to_multiple"]
