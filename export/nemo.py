"""`.nemo` archives (a tar of model_config.yaml and model_weights.ckpt): recognized, and refused
with the way to export them instead."""

import argparse
import tarfile
from pathlib import Path


class NemoArchive:
    quantizes = False

    def matches(self, path: Path) -> bool:
        return path.is_file() and (path.suffix == ".nemo" or tarfile.is_tarfile(path))

    def export(self, path: Path, a: argparse.Namespace) -> bool:
        target = "unknown"
        try:
            import yaml
            with tarfile.open(path) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
                target = yaml.safe_load(tar.extractfile(member))["target"]
        except Exception as e:  # noqa: BLE001 - the refusal below is the answer either way
            target = f"unreadable config ({e})"
        raise ValueError(f"{path}: a NeMo archive ({target}). Rebuilding NeMo's encoders without the nemo toolkit "
                         "is not supported: no architecture is rebuilt here. Export it to ONNX where NeMo is "
                         "installed (sherpa-onnx's scripts/nemo export-*-ctc*.py write model.onnx with the metadata "
                         "and tokens.txt), then pass the .onnx to --ckpt")
