"""python -m export --ckpt PATH --out DIR [--lm-dir DIR] [--tolerance 1e-3] [--int8]

Writes the model directory `python -m service --model DIR` serves (model.onnx,
model.json, tokens.txt, optionally lm.bin + unigrams.txt, README.md) and checks
that ONNX Runtime computes what PyTorch computes, whole-utterance and chunk by
chunk with carried state. Exits 1 when a difference exceeds the tolerance.
PATH is a checkpoint of `models.train`, of either family (models/architectures.py);
what it is is printed. --int8 then quantizes the matrix products.
"""

import argparse
import sys
from pathlib import Path

from export.onnx_export import check_parity, int8_difference, quantize_int8, write_model_dir
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
    p.add_argument("--int8", action="store_true", help="quantize the model's matrix products to int8 after "
                   "the float32 parity checks pass (measure WER again: models.evaluate)")
    a = p.parse_args()
    if not a.ckpt.is_file():
        p.error(f"--ckpt {a.ckpt}: no such file")
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
    report = check_parity(model, a.out / "model.onnx", chunk_frames)
    for check, diff in report.items():
        print(f"parity {check}: max |diff| = {diff:.2e} ({'ok' if diff <= a.tolerance else 'FAIL'})")
    if max(report.values()) > a.tolerance:
        print(f"parity check failed: tolerance {a.tolerance:g}", file=sys.stderr)
        sys.exit(1)
    if a.int8:
        quantize_int8(a.out / "model.onnx")
        diff = int8_difference(model, a.out / "model.onnx")
        size = (a.out / "model.onnx").stat().st_size / 1e6
        print(f"int8: model.onnx {size:.1f} MB; int8 vs float32 PyTorch: max |diff| = {diff:.2e} (not gated)")


if __name__ == "__main__":
    main()
