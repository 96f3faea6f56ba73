"""Hugging Face `*ForCTC` model directories (wav2vec2, HuBERT, WavLM, Data2Vec audio, ...):
raw waveform in, one output per `prod(conv_stride)` samples, characters with `|` between words.

Loaded with transformers from the local directory only (never the hub). The graph is the
model plus a log-softmax; it is full-context, so it streams buffered (engine/model/schemes/buffered.py).
The feature extractor's `do_normalize` becomes the front-end's per-window normalization.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch

from export.directory import buffered_meta, export_buffered, write_directory
from models.model import num_parameters

OPSET = 17


def describe(path: Path) -> str | None:
    """What the directory holds, or None when it is not a Hugging Face CTC model."""
    config = path / "config.json"
    if not config.is_file():
        return None
    archs = json.loads(config.read_text()).get("architectures") or []
    ctc = [a for a in archs if a.endswith("ForCTC")]
    return f"a Hugging Face {ctc[0]} model directory" if ctc else None


class _LogProbs(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values):
        return torch.log_softmax(self.model(input_values).logits, dim=-1)


def load(path: Path):
    from transformers import AutoFeatureExtractor, AutoModelForCTC  # the train extra; serving needs neither
    # The feature extractor's settings: preprocessor_config.json, or (transformers 5's save_pretrained of a
    # processor) inside processor_config.json; AutoFeatureExtractor reads either.
    missing = [f for f in ("vocab.json",) if not (path / f).is_file()]
    if not any((path / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
        missing.append("preprocessor_config.json (or processor_config.json)")
    if missing:
        raise ValueError(f"{path}: a Hugging Face CTC directory needs {' and '.join(missing)} beside config.json")
    # eager attention: the SDPA path traces shape-dependent branches into the graph
    model = AutoModelForCTC.from_pretrained(str(path), local_files_only=True, attn_implementation="eager").eval()
    extractor = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
    if not hasattr(model.config, "conv_stride"):
        raise ValueError(f"{path}: {type(model).__name__} does not take the raw waveform (no conv_stride); "
                         "only waveform CTC models (wav2vec2, HuBERT, WavLM, Data2Vec audio) export from Hugging Face")
    return model, extractor


def tokens_of(path: Path, model) -> tuple[list[str], str]:
    """vocab.json in id order, the pad token (Hugging Face's CTC blank) as <blk>; an upper-case
    vocabulary is lower-cased, as the LM and the text normalization are."""
    vocab = json.loads((path / "vocab.json").read_text())
    if vocab and isinstance(next(iter(vocab.values())), dict):  # multilingual tokenizers: one vocabulary per language
        raise ValueError(f"{path}/vocab.json holds several languages' vocabularies; export one language's")
    by_id = {i: t for t, i in vocab.items()}
    size = model.config.vocab_size
    tokens = [by_id.get(i, f"<unused{i}>") for i in range(size)]
    tokens[model.config.pad_token_id] = "<blk>"
    note = ""
    plain = [t for t in tokens if not t.startswith("<")]
    if any(t != t.lower() for t in plain) and len({t.lower() for t in plain}) == len(plain):
        tokens = [t if t.startswith("<") else t.lower() for t in tokens]
        note = "; upper-case letters written lower-case"
    return tokens, note


def export(path: Path, out: Path, *, name: str | None, version: str | None, lm_dir: Path | None,
           window_ms: tuple[int, int, int], tolerance: float) -> dict[str, float]:
    model, extractor = load(path)
    tokens, note = tokens_of(path, model)
    rate = extractor.sampling_rate
    hop = math.prod(model.config.conv_stride)
    out.mkdir(parents=True, exist_ok=True)
    wrapped = _LogProbs(model)
    x = (np.random.default_rng(0).standard_normal((2, 3 * rate)) * 0.1).astype(np.float32)
    with torch.no_grad():  # the reference first: tracing leaves the weight-normed positional convolution changed
        reference = wrapped(torch.from_numpy(x)).numpy()
        torch.onnx.export(wrapped, (torch.zeros(1, rate),), str(out / "model.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=["input_values"], output_names=["logprobs"],
                          dynamic_axes={"input_values": {0: "batch", 1: "samples"},
                                        "logprobs": {0: "batch", 1: "frames"}})
    streaming, chunk = buffered_meta(*window_ms, frame_ms=1000 * hop / rate, sub=1)
    arch = type(model).__name__
    meta = {
        "name": name or f"hf-{model.config.model_type}", "version": version or "1",
        "language_code": "en", "kind": "huggingface_ctc",
        "architecture": f"{arch} ({model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}), "
                        f"exported from {path.name}",
        "features": {"kind": "waveform", "sample_rate": rate, "hop_length": hop, "win_length": hop,
                     "normalize": "utterance" if getattr(extractor, "do_normalize", True) else "none"},
        "io": {"signal": "input_values", "length": None, "logprobs": "logprobs", "layout": "waveform"},
        "subsampling_factor": 1, "chunk_frames": chunk, "lookahead_frames": streaming["right_frames"],
        "streaming": streaming, "parameters": num_parameters(model),
    }
    write_directory(out, meta, tokens, lm_dir, f"{meta['architecture']}; {meta['parameters']:,} parameters.")
    print(f"tokens: {len(tokens)} from vocab.json, pad token {model.config.pad_token_id} as the blank{note}")
    return parity(out, x, reference)


def parity(out: Path, x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """ONNX Runtime vs transformers on the same two clips of noise, together and one alone."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = sess.run(["logprobs"], {"input_values": x})[0]
    single = sess.run(["logprobs"], {"input_values": x[1:]})[0]
    return {"onnx_vs_transformers": float(np.abs(ours - ref).max()),
            "batched_vs_single": float(np.abs(ours[1:] - single).max())}


class HuggingFace:
    quantizes = False

    def matches(self, path: Path) -> bool:
        return path.is_dir() and describe(path) is not None

    def export(self, path: Path, a) -> bool:
        print(f"found: {describe(path)}")
        report = export(path, a.out, name=a.name, version=a.version, lm_dir=a.lm_dir, window_ms=a.window_ms,
                        tolerance=a.tolerance)
        return export_buffered(report, a.out, a.tolerance)
