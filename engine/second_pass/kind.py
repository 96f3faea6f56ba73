"""The shape every second pass has. A kind is one class in a file of its own, named in
`engine.second_pass.KINDS`; a model directory's `second_pass.kind` chooses it."""

from pathlib import Path
from typing import Protocol

import numpy as np


class SecondPass(Protocol):
    keep_first_above: float  # a final whose first-pass confidence reaches this is not decoded again
    max_seconds: float  # nor is an utterance longer than this
    lm_weight: float  # the model directory's KenLM's weight in choosing among the pass's texts (0: none)

    def __init__(self, directory: Path, settings: dict, threads: int) -> None:
        """`directory`: the model directory's `second_pass/`; `settings`: model.json's `second_pass`
        (ValueError naming what is wrong)."""

    def transcribe(self, samples: np.ndarray, hotwords: tuple[str, ...] = (),
                   proposed: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        """One utterance's samples (mono, float32, at the model's rate) -> the texts it may be, as the
        second pass writes them (cased and punctuated where it can), biased toward the request's
        hotwords, with the `proposed` texts (the first pass's, spoken form) scored alike; best
        first, each with the pass's score (a log-probability per token)."""
