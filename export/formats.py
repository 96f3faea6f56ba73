"""The checkpoint formats `python -m export` reads, as one shape and a table: a format is a class
in a file of its own (`Format`), and `FORMATS` is the order in which PATH is matched against them."""

import argparse
from pathlib import Path
from typing import Protocol

from export.huggingface import HuggingFace
from export.nemo import NemoArchive
from export.onnx_ctc import OnnxCtc
from export.ours import Ours


class Format(Protocol):
    quantizes: bool  # whether --int8 applies

    def matches(self, path: Path) -> bool:
        """Whether PATH looks like this format (cheap: no model is loaded)."""

    def export(self, path: Path, a: argparse.Namespace) -> bool:
        """Writes a.out from PATH, prints what it found and the parity it measured; False when a
        gated check fails. ValueError: PATH is not what it looked like, said plainly."""


FORMATS: tuple[Format, ...] = (HuggingFace(), OnnxCtc(), NemoArchive(), Ours())


def detect(path: Path) -> Format:
    """The format of PATH; a clear error for anything none reads."""
    for fmt in FORMATS:
        if fmt.matches(path):
            return fmt
    if path.is_dir():
        raise ValueError(f"{path}: a directory, but not a Hugging Face CTC model (expected config.json with a "
                         "*ForCTC architecture, vocab.json and preprocessor_config.json or processor_config.json)")
    raise ValueError(f"{path}: no such file or directory")
