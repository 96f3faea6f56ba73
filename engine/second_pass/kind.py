"""The shape every second pass has. A kind is one class in a file of its own, named in
`engine.second_pass.KINDS`; a model directory's `second_pass.kind` chooses it."""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Utterance:
    """What a second pass is asked to hear again."""
    samples: np.ndarray  # mono, float32, at the model's rate
    hotwords: tuple[str, ...] = ()  # the request's phrases, to bias it toward
    proposed: tuple[str, ...] = ()  # texts to score beside its own (the first pass's, spoken form)


class SecondPass(Protocol):
    keep_first_above: float  # a final whose first-pass confidence reaches this is not decoded again
    max_seconds: float  # nor is an utterance longer than this
    lm_weight: float  # the model directory's KenLM's weight in choosing among the pass's texts (0: none)
    ctc_weight: float  # and the first pass's (its best CTC path's log-probability per frame for each text)

    def __init__(self, directory: Path, settings: dict, threads: int) -> None:
        """`directory`: the model directory's `second_pass/`; `settings`: model.json's `second_pass`
        (ValueError naming what is wrong)."""

    def transcribe(self, utterances: list[Utterance]) -> list[list[tuple[str, float]]]:
        """Each utterance -> the texts it may be, as the second pass writes them (cased and
        punctuated where it can), biased toward its hotwords, with its proposed texts scored alike;
        best first, each with the pass's score (a log-probability per token). Utterances asked
        together may be decoded as one batch."""
