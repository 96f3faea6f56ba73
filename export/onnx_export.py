"""ONNX graph, model directory and parity checks.

Names follow the NeMo CTC export convention (`audio_signal` (B, n_mels, T),
`length`, `logprobs` (B, T', V)) plus explicit streaming state in and out.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

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
    (out / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))
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
        "tail_padding_ms": 320,  # quiet audio appended at the end of a stream (see service/recognizer.py)
        "parameters": num_parameters(model),
        "decoder": {"beam_width": 25, "lm_weight": 0.5, "word_bonus": 1.0},
    }
    if lm_dir:
        for f in ("lm.bin", "unigrams.txt"):
            shutil.copyfile(lm_dir / f, out / f)
        meta["decoder"].update(lm="lm.bin", unigrams="unigrams.txt")
        tuned = lm_dir / "decoder.json"  # written by LM tuning, if it ran
        if tuned.is_file():
            meta["decoder"].update(json.loads(tuned.read_text()))
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")

    onnx_model = onnx.load(str(out / "model.onnx"))
    props = {"model_type": "streaming_ctc", "vocab_size": str(len(tokens)),
             "subsampling_factor": str(model.subsampling), "feature_kind": ckpt["feature_config"].get("kind", "htk"),
             "normalize_type": "", "chunk_frames": str(chunk_frames),
             "lookahead_frames": str(meta["lookahead_frames"]),
             "name": name, "version": version, "sample_rate": str(ckpt["feature_config"]["sample_rate"])}
    onnx.helper.set_model_props(onnx_model, props)
    onnx.save(onnx_model, str(out / "model.onnx"))
    if not (out / "README.md").exists():
        (out / "README.md").write_text(
            f"# {name} {version}\n\n{meta['architecture']}; {meta['parameters']:,} parameters; "
            f"trained on {ckpt.get('train_hours', 0):.1f} h of speech.\n")


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


def quantize_int8(onnx_path: Path) -> None:
    """Replaces the model with its int8 dynamic quantization (MatMul weights; convolutions stay
    float32): ONNX Runtime's standard speed-up on CPUs. Accuracy must be measured again."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = onnx_path.with_suffix(".fp32.onnx")
    onnx_path.replace(fp32)
    quantize_dynamic(str(fp32), str(onnx_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    model = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    onnx.helper.set_model_props(model, {**props, "quantization": "int8 dynamic (MatMul)"})
    onnx.save(model, str(onnx_path))
    fp32.unlink()


def int8_difference(model, onnx_path: Path, frames: int = 400) -> float:
    """Max |log-prob| difference between the int8 graph and PyTorch in float32 (informative: int8
    moves log-probs by far more than export's tolerance; WER decides)."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs, _, _ = model.state_names()
    x = model.parity_features(frames, np.random.default_rng(0))
    feeds = {"audio_signal": x, "length": np.array([frames], np.int64),
             **{n: s.numpy() for n, s in zip(inputs, model.initial_state(1))}}
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.tensor([frames]), *model.initial_state(1))[0].numpy()
    return float(np.abs(sess.run(["logprobs"], feeds)[0] - ref).max())

