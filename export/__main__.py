"""python -m export --ckpt PATH --out DIR [--lm-dir DIR] [--tolerance 1e-3] [--int8 MANIFEST]

Writes the model directory `python -m service --model DIR` serves (model.onnx,
model.json, tokens.txt, optionally lm.bin + unigrams.txt, README.md) and checks
that ONNX Runtime computes what the original framework computes. Exits 1 when a
difference exceeds the tolerance. PATH is detected, and what it is printed:
- a checkpoint of `models.train`, of either family (models/architectures.py): parity
  whole-utterance and chunk by chunk with carried state. --int8 MANIFEST then quantizes
  the matrix products to int8, activation ranges calibrated on that manifest's speech, and
  checks the int8 graph again (chunked vs whole and batched vs single gated like float32;
  its distance from float32 PyTorch printed, not gated: WER decides, models.evaluate);
- a Hugging Face `*ForCTC` model directory (wav2vec2, HuBERT, WavLM, ...: config.json,
  weights, vocab.json, preprocessor_config.json or processor_config.json), read with
  transformers from that directory only;
- an ONNX CTC graph in NeMo's or icefall/WeNet's convention (as sherpa-onnx has them) with
  its tokens.txt.
Hugging Face and ONNX models are full-context: they stream buffered (left context + chunk +
right context per model call, the chunk's outputs kept), set by --left-context-ms, --chunk-ms
and --right-context-ms (the service's flags of the same names override them per deployment);
the streamed log-probs are compared with the whole utterance's and the number printed.
"""

import argparse
import sys
from pathlib import Path

from export.formats import detect


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True, help="a models.train checkpoint, a Hugging Face *ForCTC "
                   "directory, or a NeMo/icefall-convention CTC .onnx (with tokens.txt)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--lm-dir", type=Path, help="directory with lm.bin and unigrams.txt (python -m models.lm)")
    p.add_argument("--name", help="model name reported by GetModelInfo and metrics")
    p.add_argument("--version", help="model version (default: the checkpoint's training step, or 1)")
    p.add_argument("--chunk-frames", type=int, help="ours: feature frames (10 ms) per streaming model step "
                   "(default: 16, or a whisper_ctc model's block)")
    p.add_argument("--tokens", type=Path, help="ONNX: the vocabulary (default: tokens.txt beside the graph)")
    p.add_argument("--left-context-ms", type=int, default=2000, help="buffered models: past audio per call")
    p.add_argument("--chunk-ms", type=int, default=1000, help="buffered models: new audio per call")
    p.add_argument("--right-context-ms", type=int, default=480, help="buffered models: future audio per call")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |log-prob| difference")
    p.add_argument("--int8", type=Path, metavar="MANIFEST", help="ours: after the float32 parity checks pass, "
                   "quantize the matrix products to int8, calibrated on this manifest's audio (measure WER again)")
    p.add_argument("--calibration-utterances", type=int, default=40, help="utterances of --int8's manifest "
                   "to calibrate on, evenly spaced (default 40)")
    a = p.parse_args()
    if a.int8 and not a.int8.is_file():
        p.error(f"--int8 {a.int8}: no such manifest")
    if a.lm_dir and not (a.lm_dir / "lm.bin").is_file():
        p.error(f"--lm-dir {a.lm_dir}: no lm.bin")
    if min(a.left_context_ms, a.right_context_ms) < 0 or a.chunk_ms <= 0:
        p.error("--chunk-ms must be positive, the contexts at least 0")
    a.window_ms = (a.left_context_ms, a.chunk_ms, a.right_context_ms)
    try:
        fmt = detect(a.ckpt)
        if a.int8 and not fmt.quantizes:
            p.error("--int8 applies to models.train checkpoints only")
        ok = fmt.export(a.ckpt, a)
    except ValueError as e:
        p.error(str(e))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
