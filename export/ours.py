"""Checkpoints of `models.train`, of any family (models/architectures.py): parity whole-utterance
and chunk by chunk with carried state; --int8 then quantizes and checks again."""

import argparse
import sys
from pathlib import Path

from export.directory import passes


class Ours:
    quantizes = True

    def matches(self, path: Path) -> bool:
        return path.is_file()

    def export(self, path: Path, a: argparse.Namespace) -> bool:
        from export.onnx_export import calibration_feeds, check_parity, quantize_int8, write_model_dir
        from models import architectures
        try:
            model, ckpt = architectures.load(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same answer
            raise ValueError(f"{path}: not a checkpoint of models.train ({type(e).__name__}: {e}); expected that, "
                             "a Hugging Face *ForCTC directory, or a NeMo/icefall-convention .onnx with "
                             "tokens.txt") from e
        print(f"found: a {model.cfg.kind} checkpoint of models.train ({model.describe()})")
        version = a.version or f"step{ckpt.get('step', 0)}"
        name = a.name or f"ctc-{model.cfg.kind.split('_')[0]}"
        chunk_frames = a.chunk_frames or model.default_chunk_frames
        try:
            write_model_dir(model, ckpt, a.out, name=name, version=version, chunk_frames=chunk_frames,
                            lm_dir=a.lm_dir)
        except ValueError as e:  # the checkpoint read, but cannot be written as asked (exit 1, as a failed check)
            sys.exit(f"python -m export: error: {e}")
        print(f"wrote {a.out}")
        if not passes(check_parity(model, a.out / "model.onnx", chunk_frames), a.tolerance):
            return False
        if not a.int8:
            return True
        feeds = calibration_feeds(a.out, a.int8, a.calibration_utterances)
        quantize_int8(a.out / "model.onnx", feeds)
        size = (a.out / "model.onnx").stat().st_size / 1e6
        print(f"int8: model.onnx {size:.1f} MB, calibrated on {len(feeds)} chunks of {a.int8}")
        report = check_parity(model, a.out / "model.onnx", chunk_frames)
        print(f"int8 parity onnx_vs_pytorch: max |diff| = {report.pop('onnx_vs_pytorch'):.2e} (not gated)")
        return passes(report, a.tolerance, "int8 ")
