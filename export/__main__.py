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
import tarfile
from pathlib import Path

from export import huggingface, onnx_ctc
from export.directory import report_buffered


def detect(path: Path) -> str:
    """The kind of PATH: ours, huggingface, onnx; a clear error for anything else."""
    if path.is_dir():
        if huggingface.describe(path):
            return "huggingface"
        raise ValueError(f"{path}: a directory, but not a Hugging Face CTC model (expected config.json with a "
                         "*ForCTC architecture, vocab.json and preprocessor_config.json or processor_config.json)")
    if not path.is_file():
        raise ValueError(f"{path}: no such file or directory")
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".nemo" or tarfile.is_tarfile(path):
        raise ValueError(nemo_refusal(path))
    return "ours"


def nemo_refusal(path: Path) -> str:
    """A .nemo archive (a tar of model_config.yaml and model_weights.ckpt): what it is, and why not."""
    target = "unknown"
    try:
        import yaml
        with tarfile.open(path) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
            target = yaml.safe_load(tar.extractfile(member))["target"]
    except Exception as e:  # noqa: BLE001 - the refusal below is the answer either way
        target = f"unreadable config ({e})"
    return (f"{path}: a NeMo archive ({target}). Rebuilding NeMo's encoders without the nemo toolkit is not "
            "supported: no architecture is rebuilt here. Export it to ONNX where NeMo is installed "
            "(sherpa-onnx's scripts/nemo export-*-ctc*.py write model.onnx with the metadata and tokens.txt), "
            "then pass the .onnx to --ckpt")


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
    window = (a.left_context_ms, a.chunk_ms, a.right_context_ms)
    try:
        kind = detect(a.ckpt)
        if kind == "ours":
            export_ours(a)
            return
        if a.int8:
            p.error("--int8 applies to models.train checkpoints only")
        if kind == "huggingface":
            print(f"found: {huggingface.describe(a.ckpt)}")
            report = huggingface.export(a.ckpt, a.out, name=a.name, version=a.version, lm_dir=a.lm_dir,
                                        window_ms=window, tolerance=a.tolerance)
        else:
            report = onnx_ctc.export(a.ckpt, a.out, tokens_path=a.tokens, name=a.name, version=a.version,
                                     lm_dir=a.lm_dir, window_ms=window)
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {a.out}")
    if report and not passes(report, a.tolerance):
        sys.exit(1)
    report_buffered(a.out)


def export_ours(a) -> None:
    from export.onnx_export import calibration_feeds, check_parity, quantize_int8, write_model_dir
    from models import architectures
    try:
        model, ckpt = architectures.load(a.ckpt)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same answer
        raise ValueError(f"{a.ckpt}: not a checkpoint of models.train ({type(e).__name__}: {e}); expected that, "
                         "a Hugging Face *ForCTC directory, or a NeMo/icefall-convention .onnx with tokens.txt") from e
    print(f"found: a {model.cfg.kind} checkpoint of models.train ({model.describe()})")
    version = a.version or f"step{ckpt.get('step', 0)}"
    name = a.name or f"ctc-{model.cfg.kind.split('_')[0]}"
    chunk_frames = a.chunk_frames or model.default_chunk_frames
    try:
        write_model_dir(model, ckpt, a.out, name=name, version=version, chunk_frames=chunk_frames, lm_dir=a.lm_dir)
    except ValueError as e:
        sys.exit(f"python -m export: error: {e}")
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
