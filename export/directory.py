"""Writing a model directory, and the parity of a buffered (full-context) model streamed.

Every exporter ends here: tokens.txt, model.json, the LM files, a README.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from engine.decoder.beam_search import vocabulary_kind
from engine.features import frontend, logmel_utterance, normalize_window, pad_to_multiple
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession

DECODER_DEFAULTS = {"beam_width": 25, "lm_weight": 0.5, "word_bonus": 1.0}


def write_directory(out: Path, meta: dict, tokens: list[str], lm_dir: Path | None, readme: str) -> None:
    """model.onnx must be in `out` already."""
    meta = {**meta, "decoder": {**DECODER_DEFAULTS, **meta.get("decoder", {})}}
    (out / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))
    if lm_dir:
        for f in ("lm.bin", "unigrams.txt"):
            shutil.copyfile(lm_dir / f, out / f)
        meta["decoder"].update(lm="lm.bin", unigrams="unigrams.txt")
        tuned = lm_dir / "decoder.json"  # written by LM tuning, if it ran
        if tuned.is_file():
            meta["decoder"].update(json.loads(tuned.read_text()))
    (out / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    if not (out / "README.md").exists():
        (out / "README.md").write_text(f"# {meta['name']} {meta['version']}\n\n{readme}\n\n"
                                       f"Vocabulary: {len(tokens)} tokens, {vocabulary_kind(tokens)}.\n")


def buffered_meta(left_ms: int, chunk_ms: int, right_ms: int, frame_ms: float, sub: int) -> tuple[dict, int]:
    """model.json's `streaming` for the buffered scheme, and chunk_frames; contexts rounded to whole output frames."""
    step = frame_ms * sub

    def frames(ms: int) -> int:
        return int(round(ms / step)) * sub

    chunk = max(sub, frames(chunk_ms))
    return {"scheme": "buffered", "left_frames": frames(left_ms), "right_frames": max(sub, frames(right_ms))}, chunk


def buffered_parity(directory: Path, seconds: float = 8.0, seed: int = 0) -> dict[str, float]:
    """A buffered model streamed chunk by chunk, as the service runs it, against one call on the
    whole utterance, in the kept region: max and mean |log-prob| difference, and the latency the
    scheme adds (chunk + right context). The signal is noise shaped like speech's envelope: this
    measures the scheme, not accuracy."""
    spec = ModelSpec.load(directory)
    session, fe = ModelSession(spec, "cpu"), frontend(spec.features)
    rng = np.random.default_rng(seed)
    n = int(seconds * spec.features.sample_rate)
    envelope = 0.5 + 0.5 * np.sin(np.arange(n) / spec.features.sample_rate * 2 * np.pi * 3.0)
    audio = (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)
    frames = pad_to_multiple(fe, logmel_utterance(fe, audio), spec.subsampling_factor)
    whole = session.session.run([spec.io.logprobs], spec.io.feeds(normalize_window(spec.features, frames)[None]))[0][0]
    streamed, state = [], session.initial_state()
    for i in range(0, len(frames), spec.chunk_frames):
        out, state = session.step(frames[i:i + spec.chunk_frames], state)
        streamed.append(out)
    delay = spec.scheme.right_frames // spec.subsampling_factor
    streamed = np.concatenate(streamed)[delay:]
    m = min(len(streamed), len(whole))
    diff = np.abs(streamed[:m] - whole[:m])
    ms = 1000 * spec.features.hop_length / spec.features.sample_rate
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "argmax_agreement": float((streamed[:m].argmax(1) == whole[:m].argmax(1)).mean()),
            "added_latency_ms": (spec.chunk_frames + spec.scheme.right_frames) * ms}


def report_buffered(directory: Path) -> None:
    r = buffered_parity(directory)
    print(f"buffered streaming vs whole utterance (8 s, kept region): max |diff| = {r['max_abs_diff']:.2e}, "
          f"mean {r['mean_abs_diff']:.2e}, best token agrees on {100 * r['argmax_agreement']:.1f}% of frames "
          f"(not gated: the contexts decide); latency added: {r['added_latency_ms']:.0f} ms (chunk + right context)")


def passes(report: dict[str, float], tolerance: float, label: str = "") -> bool:
    """Prints each parity check against the tolerance; False when one exceeds it."""
    for check, diff in report.items():
        print(f"{label}parity {check}: max |diff| = {diff:.2e} ({'ok' if diff <= tolerance else 'FAIL'})")
    if max(report.values()) > tolerance:
        print(f"{label}parity check failed: tolerance {tolerance:g}", file=sys.stderr)
        return False
    return True


def export_buffered(report: dict[str, float] | None, out: Path, tolerance: float) -> bool:
    """A full-context model written: its parity gated, then what buffered streaming changes shown."""
    print(f"wrote {out}")
    if report and not passes(report, tolerance):
        return False
    report_buffered(out)
    return True
