"""CTC models already in ONNX, in the conventions sherpa-onnx reads:

- NeMo (`model.export()`, sherpa-onnx's NeMo CTC models): `audio_signal` (B, n_mels, T),
  `length`, `logprobs`; NeMo's mel front-end; metadata `normalize_type` (per_feature, or
  empty: none), `subsampling_factor`, `vocab_size`;
- icefall / WeNet offline CTC (sherpa-onnx's zipformer and WeNet CTC models): `x` (N, T, C),
  `x_lens`, `log_probs`; Kaldi fbank (kaldi-native-fbank's), samples scaled to 16-bit for WeNet.

Both come with `tokens.txt` (`symbol id` per line, the blank as `<blk>`), next to the file or
named by --tokens. The graph is copied as it is and streams buffered; the subsampling factor is
read from the metadata or, where there is none, measured by running the graph.
"""

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from engine.model.directory import read_tokens
from export.directory import buffered_meta, export_buffered, write_directory

NEMO_FEATURES = {"kind": "nemo", "sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160,
                 "fmin": 0.0, "fmax": 8000.0, "preemph": 0.97}
KALDI_FEATURES = {"kind": "kaldi", "sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160,
                  "fmin": 20.0, "fmax": 7600.0, "preemph": 0.97}  # kaldi-native-fbank as sherpa-onnx sets it
CONVENTIONS = {  # name: (signal, length, log-probs, layout)
    "nemo": ("audio_signal", "length", "logprobs", "channels_first"),
    "icefall": ("x", "x_lens", "log_probs", "channels_last"),
}


def convention(path: Path) -> tuple[str, onnx.ModelProto]:
    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}]
    outputs = [o.name for o in model.graph.output]
    for name, (signal, length, logprobs, _) in CONVENTIONS.items():
        if signal in inputs and logprobs in outputs:
            extra = sorted(set(inputs) - {signal, length})
            if extra:
                raise ValueError(f"{path}: a {name}-convention graph with state inputs ({', '.join(extra)}): streaming "
                                 "ONNX exports with their own caches are not supported; export the offline (full-"
                                 "context) CTC model, which the service streams buffered")
            return name, model
    expected = "; ".join(f"{n}: inputs {s} and {length}, output {o}" for n, (s, length, o, _) in CONVENTIONS.items())
    raise ValueError(f"{path}: inputs {inputs} and outputs {outputs} follow no CTC convention known here ({expected})")


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def measured_subsampling(path: Path, name: str, width: int) -> int:
    """Input frames per output frame, from one run on 8 s of frames."""
    signal, length, logprobs, layout = CONVENTIONS[name]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = 800
    x = np.zeros((1, width, frames) if layout == "channels_first" else (1, frames, width), np.float32)
    out = sess.run([logprobs], {signal: x, length: np.array([frames], np.int64)})[0]
    return max(1, round(frames / out.shape[1]))


def feature_width(model: onnx.ModelProto, name: str) -> int:
    signal, _, _, layout = CONVENTIONS[name]
    dims = next(i for i in model.graph.input if i.name == signal).type.tensor_type.shape.dim
    axis = 1 if layout == "channels_first" else 2
    if not dims[axis].dim_value:
        raise ValueError(f"the graph's {signal} has no fixed feature size on axis {axis}")
    return dims[axis].dim_value


def export(path: Path, out: Path, *, tokens_path: Path | None, name: str | None, version: str | None,
           lm_dir: Path | None, window_ms: tuple[int, int, int]) -> dict[str, float]:
    kind, model = convention(path)
    print(f"found: an ONNX CTC graph in {kind}'s convention")
    tokens_path = tokens_path or path.with_name("tokens.txt")
    if not tokens_path.is_file():
        raise ValueError(f"{path}: no tokens.txt beside it; name the vocabulary with --tokens")
    tokens = list(read_tokens(tokens_path))
    if "<blk>" not in tokens:
        raise ValueError(f"{tokens_path}: no <blk> token (the CTC blank, as sherpa-onnx writes it)")
    meta_in = metadata(model)
    if "vocab_size" in meta_in and int(meta_in["vocab_size"]) != len(tokens):
        raise ValueError(f"{path}: metadata vocab_size {meta_in['vocab_size']} but {tokens_path} has {len(tokens)}")
    width = feature_width(model, kind)
    if kind == "nemo":
        normalize = meta_in.get("normalize_type", "per_feature") or "none"
        features = {**NEMO_FEATURES, "n_mels": width, "normalize": normalize}
    else:
        wenet = meta_in.get("model_type", "").startswith("wenet")
        features = {**KALDI_FEATURES, "n_mels": width, "scale": 32768.0 if wenet else 1.0}
    sub = int(meta_in["subsampling_factor"]) if "subsampling_factor" in meta_in else \
        measured_subsampling(path, kind, width)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out / "model.onnx")
    streaming, chunk = buffered_meta(*window_ms, frame_ms=10.0, sub=sub)
    signal, length, logprobs, layout = CONVENTIONS[kind]
    model_type = meta_in.get("model_type", "unknown type")
    meta = {
        "name": name or f"{kind}-ctc", "version": version or meta_in.get("version", "1"), "language_code": "en",
        "kind": f"{kind}_onnx", "architecture": f"{model_type} ({kind} ONNX convention), from {path.name}",
        "features": features, "io": {"signal": signal, "length": length, "logprobs": logprobs, "layout": layout},
        "subsampling_factor": sub, "chunk_frames": chunk, "lookahead_frames": streaming["right_frames"],
        "streaming": streaming, "parameters": int(sum(np.prod(t.dims) for t in model.graph.initializer)),
    }
    write_directory(out, meta, tokens, lm_dir, f"{meta['architecture']}; {meta['parameters']:,} parameters.")
    print(f"front-end: {features['kind']} ({width} bins, normalize {features.get('normalize', 'none')}); "
          f"subsampling {sub} ({'metadata' if 'subsampling_factor' in meta_in else 'measured'}); "
          f"{len(tokens)} tokens from {tokens_path}")
    print("parity: the graph is served as it is (copied byte for byte); the streamed check follows")
    return {}


class OnnxCtc:
    quantizes = False

    def matches(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".onnx"

    def export(self, path: Path, a) -> bool:
        report = export(path, a.out, tokens_path=a.tokens, name=a.name, version=a.version, lm_dir=a.lm_dir,
                        window_ms=a.window_ms)
        return export_buffered(report, a.out, a.tolerance)
