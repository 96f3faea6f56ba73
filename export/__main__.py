"""python -m export --ckpt PATH --out DIR [--lm-dir DIR] [--tolerance 1e-3] [--int8 MANIFEST]

Writes the model directory `python -m service --model DIR` serves (model.onnx,
model.json, tokens.txt, optionally lm.bin + unigrams.txt, README.md) and checks
that ONNX Runtime computes what PyTorch computes, whole-utterance and chunk by
chunk with carried state. Exits 1 when a difference exceeds the tolerance.
PATH is a checkpoint of `models.train`, of either family (models/architectures.py);
what it is is printed. --int8 MANIFEST then quantizes the matrix products to int8,
activation ranges calibrated on that manifest's speech, and checks the int8 graph
again: chunked vs whole and batched vs single are gated like float32; its distance
from float32 PyTorch is printed, not gated (WER decides: models.evaluate).
"""

import argparse
import sys
from pathlib import Path

from export.onnx_export import calibration_feeds, check_parity, quantize_int8, write_model_dir
from models import architectures


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by python -m models.train")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--lm-dir", type=Path, help="directory with lm.bin and unigrams.txt (python -m models.lm)")
    p.add_argument("--name", help="model name reported by GetModelInfo and metrics (default: ctc-gru, ctc-whisper)")
    p.add_argument("--version", help="model version (default: the checkpoint's training step)")
    p.add_argument("--chunk-frames", type=int, help="feature frames (10 ms) per streaming model step "
                   "(default: 16, or a whisper_ctc model's block)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |log-prob| difference")
    p.add_argument("--int8", type=Path, metavar="MANIFEST", help="after the float32 parity checks pass, quantize "
                   "the matrix products to int8, calibrated on this manifest's audio (measure WER again)")
    p.add_argument("--calibration-utterances", type=int, default=40, help="utterances of --int8's manifest "
                   "to calibrate on, evenly spaced (default 40)")
    a = p.parse_args()
    if not a.ckpt.is_file():
        p.error(f"--ckpt {a.ckpt}: no such file")
    if a.int8 and not a.int8.is_file():
        p.error(f"--int8 {a.int8}: no such manifest")
    if a.lm_dir and not (a.lm_dir / "lm.bin").is_file():
        p.error(f"--lm-dir {a.lm_dir}: no lm.bin")
    model, ckpt = architectures.load(a.ckpt)
    print(f"found: a {model.cfg.kind} checkpoint of models.train ({model.describe()})")
    version = a.version or f"step{ckpt.get('step', 0)}"
    name = a.name or f"ctc-{model.cfg.kind.split('_')[0]}"
    chunk_frames = a.chunk_frames or model.default_chunk_frames
    try:
        write_model_dir(model, ckpt, a.out, name=name, version=version, chunk_frames=chunk_frames, lm_dir=a.lm_dir)
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {a.out}")
    if not passes(check_parity(model, a.out / "model.onnx", chunk_frames), a.tolerance):
        sys.exit(1)
    if a.int8:
        feeds = calibration_feeds(a.out, a.int8, a.calibration_utterances)
        quantize_int8(a.out / "model.onnx", feeds)
        size = (a.out / "model.onnx").stat().st_size / 1e6
        print(f"int8: model.onnx {size:.1f} MB, calibrated on {len(feeds)} chunks of {a.int8}")
        report = check_parity(model, a.out / "model.onnx", chunk_frames)
        print(f"int8 parity onnx_vs_pytorch: max |diff| = {report.pop('onnx_vs_pytorch'):.2e} (not gated)")
        if not passes(report, a.tolerance, "int8 "):
            sys.exit(1)


def passes(report: dict[str, float], tolerance: float, label: str = "") -> bool:
    for check, diff in report.items():
        print(f"{label}parity {check}: max |diff| = {diff:.2e} ({'ok' if diff <= tolerance else 'FAIL'})")
    if max(report.values()) > tolerance:
        print(f"{label}parity check failed: tolerance {tolerance:g}", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    main()
