"""ONNX graph, model directory and parity checks.

Names follow the NeMo CTC export convention (`audio_signal` (B, n_mels, T),
`length`, `logprobs` (B, T', V)) plus explicit streaming state in and out.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from engine.features import frontend, logmel_utterance, pad_to_multiple
from engine.manifest import read_audio, read_manifest, spread
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from export.directory import write_directory
from models.model import num_parameters

# What both model families offer export (models.model.StreamingCTC, models.encoder_ctc.EncoderCTC):
# subsampling, chunk_multiple, cfg.lookahead_frames, initial_state(batch), state_names(), describe(),
# streaming(), parity_features(), and
# forward(audio_signal, length, *state) -> (logprobs, lengths, *next_state).

OPSET = 17


def export_onnx(model, path: Path) -> None:
    model.eval()
    state = model.initial_state(1)
    inputs, outputs, axes = model.state_names()
    x = torch.zeros(1, model.cfg.features.n_mels, 64)
    dynamic = {"audio_signal": {0: "batch", 2: "time"}, "length": {0: "batch"},
               "logprobs": {0: "batch", 1: "frames"}, "encoded_lengths": {0: "batch"}}
    for name, axis in zip(inputs + outputs, axes * 2):
        dynamic[name] = {axis: "batch"}
    with torch.no_grad():
        torch.onnx.export(model, (x, torch.tensor([64]), *state), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["audio_signal", "length", *inputs],
                          output_names=["logprobs", "encoded_lengths", *outputs], dynamic_axes=dynamic)


def write_model_dir(model, ckpt: dict, out: Path, *, name: str, version: str, chunk_frames: int,
                    lm_dir: Path | None) -> None:
    if chunk_frames <= 0 or chunk_frames % model.chunk_multiple:
        raise ValueError(f"chunk frames must be a positive multiple of {model.chunk_multiple}")
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out / "model.onnx")
    tokens = ckpt["tokens"]
    inputs, outputs, axes = model.state_names()
    states = [{"input": i, "output": o, "shape": list(s.shape), "batch_axis": a}
              for i, o, s, a in zip(inputs, outputs, model.initial_state(1), axes)]
    meta = {
        "name": name, "version": version, "language_code": "en", "kind": model.cfg.kind,
        "architecture": model.describe(),
        "features": ckpt["feature_config"], "subsampling_factor": model.subsampling,
        # in feature frames (10 ms), as chunk_frames; the outputs lag the input by as much
        "chunk_frames": chunk_frames, "lookahead_frames": model.cfg.lookahead_frames, "states": states,
        "streaming": model.streaming(),
        "tail_padding_ms": 320,  # quiet audio appended at the end of a stream (see engine/recognizer.py)
        "parameters": num_parameters(model),
    }
    onnx_model = onnx.load(str(out / "model.onnx"))
    props = {"model_type": "streaming_ctc", "vocab_size": str(len(tokens)),
             "subsampling_factor": str(model.subsampling), "feature_kind": ckpt["feature_config"].get("kind", "htk"),
             "normalize_type": "", "chunk_frames": str(chunk_frames),
             "lookahead_frames": str(meta["lookahead_frames"]),
             "name": name, "version": version, "sample_rate": str(ckpt["feature_config"]["sample_rate"])}
    onnx.helper.set_model_props(onnx_model, props)
    onnx.save(onnx_model, str(out / "model.onnx"))
    write_directory(out, meta, tokens, lm_dir, f"{meta['architecture']}; {meta['parameters']:,} parameters; "
                    f"trained on {ckpt.get('train_hours', 0):.1f} h of speech.")


def check_parity(model, onnx_path: Path, chunk_frames: int, frames: int = 400) -> dict[str, float]:
    """Max |log-prob| differences: ONNX vs PyTorch (whole utterance), ONNX chunked
    with carried state vs ONNX whole, and a batch of two vs each alone."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    state = [s.numpy() for s in model.initial_state(1)]
    inputs, outputs, axes = model.state_names()

    def run(x: np.ndarray, st: list[np.ndarray]):
        feeds = {"audio_signal": x, "length": np.full(len(x), x.shape[2], np.int64), **dict(zip(inputs, st))}
        out = sess.run(["logprobs", *outputs], feeds)
        return out[0], out[1:]

    x = model.parity_features(frames, np.random.default_rng(0))
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.tensor([frames]), *model.initial_state(1))[0].numpy()
    whole, _ = run(x, state)
    chunks, st = [], state
    for i in range(0, frames, chunk_frames):
        out, st = run(x[:, :, i:i + chunk_frames], st)
        chunks.append(out)
    y = model.parity_features(frames, np.random.default_rng(1))
    pair, _ = run(np.concatenate([x, y]), [np.concatenate([s, s], axis=a) for s, a in zip(state, axes)])
    alone_y, _ = run(y, state)
    return {
        "onnx_vs_pytorch": float(np.abs(whole - ref).max()),
        "chunked_vs_whole": float(np.abs(np.concatenate(chunks, axis=1) - whole).max()),
        "batched_vs_single": float(max(np.abs(pair[0] - whole[0]).max(), np.abs(pair[1] - alone_y[0]).max())),
    }


def calibration_feeds(directory: Path, manifest: Path, utterances: int) -> list[dict[str, np.ndarray]]:
    """Model inputs of real speech as the service feeds them: each utterance's features chunk
    by chunk, with the state the float32 graph in `directory` carries from chunk to chunk."""
    spec = ModelSpec.load(directory)
    session, logmel = ModelSession(spec, "cpu"), frontend(spec.features)
    feeds = []
    for row in spread(read_manifest(manifest), utterances):
        audio = read_audio(row["audio"], spec.features.sample_rate)
        frames = pad_to_multiple(logmel, logmel_utterance(logmel, audio), spec.chunk_frames)
        state = session.initial_state()
        for i in range(0, len(frames), spec.chunk_frames):
            chunk = frames[i:i + spec.chunk_frames]
            feeds.append({"audio_signal": np.ascontiguousarray(chunk.T[None]), "length": np.array([len(chunk)]),
                          **{s.input: x for s, x in zip(spec.states, state)}})
            _, state = session.step(chunk, state)
    return feeds


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(onnx_path: Path, feeds: list[dict[str, np.ndarray]],
                  method: CalibrationMethod = CalibrationMethod.Percentile) -> None:
    """Replaces the model with its static int8 quantization: products with a weight matrix
    (weights per channel, activations at ranges calibrated on `feeds` by `method`; Percentile needs
    feeds of one shape); attention's products of two activations and the convolutions stay float32.
    Static, not dynamic: dynamic quantization scales activations by the whole batch, so a stream's
    results would change with the streams batched beside it. Accuracy must be measured again."""
    fp32 = onnx_path.with_suffix(".fp32.onnx")
    onnx_path.replace(fp32)
    original = onnx.load(str(fp32))
    weights = {w.name for w in original.graph.initializer}
    products = [n.name for n in original.graph.node if n.op_type == "MatMul" and weights & set(n.input)]
    # reduce_range: 7-bit weights, so that x86 CPUs without VNNI (AVX2's u8 x s8 multiply-add, which
    # saturates at 16 bits in pairs) compute the same integer products as those with it.
    quantize_static(str(fp32), str(onnx_path), _Feeds(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    op_types_to_quantize=["MatMul"], nodes_to_quantize=products,
                    calibrate_method=method)
    model = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in original.metadata_props}
    quantization = f"int8 static (MatMul), {len(feeds)} calibration steps"
    onnx.helper.set_model_props(model, {**props, "quantization": quantization})
    onnx.save(model, str(onnx_path))
    fp32.unlink()
