"""The shape every streaming scheme has. A scheme is one class in a file of its own, named in
`engine.model.schemes.SCHEMES`; a model directory's `streaming.scheme` chooses it."""

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engine.features import FeatureConfig

if TYPE_CHECKING:
    from engine.model.directory import ModelSpec
    from engine.model.session import ModelSession

Window = tuple[int | None, int | None, int | None]  # a deployment's (left context, chunk, right context) in ms


class Scheme(Protocol):
    @classmethod
    def parse(cls, directory: Path, meta: dict, features: FeatureConfig, window_ms: Window
              ) -> "tuple[Scheme, int, int]":
        """model.json's `streaming` (and a deployment's window) -> (the scheme, chunk frames,
        look-ahead frames); ValueError saying what is wrong."""

    def description(self, spec: "ModelSpec") -> str:
        """For ModelInfo.streaming and the logs."""

    def initial_state(self, session: "ModelSession") -> list[np.ndarray]:
        """A new stream's state."""

    def step_batch(self, session: "ModelSession", features: list[np.ndarray], states: list[list[np.ndarray]]
                   ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """Several streams' chunks of equal length T -> each stream's (log-probs, next state)."""
