"""The shape every front-end kind has. A kind is one class in a file of its own, named in
`engine.features.KINDS`; a model directory's `features.kind` chooses it."""

from typing import Protocol

import numpy as np

from engine.features.config import FeatureConfig


class FrontEnd(Protocol):
    """Stateless: whole frames of samples in, frames (n, width) out. Frame i covers samples
    [i*hop, i*hop + win); `StreamingFeatures` keeps what does not yet complete one."""

    cfg: FeatureConfig
    lead_in: int  # zeros a stream starts with
    stream_preemph: float  # pre-emphasis over the whole stream, before framing (0: none)

    def __init__(self, cfg: FeatureConfig, warp: float = 1.0) -> None:
        """`warp`: vocal-tract-length perturbation of the filters (training; refused where it does not apply)."""

    @staticmethod
    def check(cfg: FeatureConfig) -> None:
        """Raises ValueError naming what in `cfg` this kind cannot use."""

    @staticmethod
    def width(cfg: FeatureConfig) -> int:
        """Values per frame."""

    def num_frames(self, num_samples: int) -> int: ...

    def __call__(self, samples: np.ndarray) -> np.ndarray: ...

    @property
    def silence_frame(self) -> np.ndarray:
        """The frame of digital silence, used to pad the model's last chunk."""
