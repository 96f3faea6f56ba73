"""The natively streaming Whisper encoder (models/cached_encoder_ctc.py): exported, served and
trained as the stream runs it."""

import subprocess
import sys

import grpc
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import BUNDLED, ROOT, SAMPLES
from whisper_families import assert_training_computes_what_is_served, parity_line

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.features import frontend, logmel_utterance
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from models import architectures
from models.cached_encoder_ctc import POSITIONS, CachedEncoderCTC, CachedEncoderCTCConfig
from models.whisper import load_encoder


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("tiny.en")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, encoder):
    torch.manual_seed(0)
    model = CachedEncoderCTC(CachedEncoderCTCConfig(left_frames=128, trainable_layers=1, head_hidden=64), encoder)
    tmp = tmp_path_factory.mktemp("whisper_ctc_cached")
    architectures.save(tmp / "cached.pt", model, {"step": 3})
    result = subprocess.run([sys.executable, "-m", "export", "--ckpt", str(tmp / "cached.pt"), "--out",
                             str(tmp / "model"), "--lm-dir", str(BUNDLED), "--int8",
                             str(BUNDLED / "canaries" / "manifest.jsonl"), "--calibration-utterances", "3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "model", result.stdout


def features(spec, seconds: float) -> np.ndarray:
    """The sample clip repeated to `seconds`, as the service computes its features (a multiple of 4)."""
    audio, _ = sf.read(SAMPLES / "what_time.wav", dtype="float32")
    audio = np.tile(audio, int(np.ceil(seconds * 16000 / len(audio))))[: int(seconds * 16000)]
    feats = logmel_utterance(frontend(spec.features), audio)
    return feats[: len(feats) - len(feats) % 4]


def test_export_checks_parity_in_float32_and_int8_and_declares_the_caches(exported):
    directory, stdout = exported
    assert "found: a whisper_ctc_cached checkpoint" in stdout
    for check in ("onnx_vs_pytorch", "chunked_vs_whole", "batched_vs_single"):
        line = parity_line(stdout, f"parity {check}")
        assert line.endswith("(ok)"), line
    # int8 rounds what float32 computes: blocks convolved and attended in windows of one size make
    # a stream's chunks compute exactly what the whole utterance does, so int8 cannot round them apart
    for check in ("chunked_vs_whole", "batched_vs_single"):
        line = parity_line(stdout, f"int8 parity {check}")
        assert line == f"int8 parity {check}: max |diff| = 0.00e+00 (ok)", line
    spec = ModelSpec.load(directory)
    assert (spec.chunk_frames, spec.lookahead_frames, spec.subsampling_factor) == (32, 0, 4)
    shapes = {s.input: s.shape for s in spec.states}
    # every layer's keys and values of 1.28 s (64 encoder frames) by head, the convolutions' past, the position
    caches = {f"{kv}_cache_{i}": (1, 6, 64, 64) for i in range(4) for kv in ("keys", "values")}
    assert shapes == {"conv_cache": (1, 80, 4), "position": (1, 1), **caches}


def test_streaming_in_chunks_and_batched_computes_the_whole_utterance(exported):
    spec = ModelSpec.load(exported[0])
    session = ModelSession(spec, "cpu")
    feats = features(spec, 4.0)
    whole, _ = session.step(feats, session.initial_state())
    state, chunks = session.initial_state(), []
    for i in range(0, len(feats), 2 * spec.chunk_frames):  # the last piece is a partial block
        out, state = session.step(feats[i:i + 2 * spec.chunk_frames], state)
        chunks.append(out)
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4)
    # beside a stream at another point of its life, a stream computes what it computes alone
    other = session.initial_state()
    for i in range(0, 320, 32):
        _, other = session.step(feats[::-1][i:i + 32].copy(), other)
    state, batched = session.initial_state(), []
    for i in range(0, 128, 32):
        (out, state), (_, other) = session.step_batch([feats[i:i + 32], feats[i + 64:i + 96]], [state, other])
        batched.append(out)
    np.testing.assert_allclose(np.concatenate(batched), whole[:32], atol=1e-4)


def test_a_stream_past_30_seconds_keeps_its_positions_exact_and_its_cache_full(exported):
    spec = ModelSpec.load(exported[0])
    session = ModelSession(spec, "cpu")
    feats = features(spec, 72.0)  # 3,600 encoder frames: past Whisper's 1,500 positions twice
    names = [s.input for s in spec.states]
    state, outs, seen = session.initial_state(), [], []
    for i in range(0, len(feats), 320):
        out, state = session.step(feats[i:i + 320], state)
        outs.append(out)
        seen.append(float(state[names.index("position")][0, 0]))
    frames = np.cumsum([min(320, len(feats) - i) // 2 for i in range(0, len(feats), 320)])
    # the count folds back by 1,500 once past 3,000: the same position modulo 1,500, still "full"
    np.testing.assert_array_equal(seen, np.where(frames >= 2 * POSITIONS, frames - POSITIONS, frames))
    logprobs = np.concatenate(outs)
    assert logprobs.shape[0] == len(feats) // 4 and np.isfinite(logprobs).all()


def test_cached_attention_is_whispers_attention(encoder):
    # a block whose window holds every frame before it, as cached keys and values, computes
    # what Whisper's own block computes over them all
    torch.manual_seed(0)
    model = CachedEncoderCTC(CachedEncoderCTCConfig(block_frames=32, left_frames=96), encoder)
    x, block = torch.randn(1, 48, 384), encoder.blocks[1]
    none, zeros = torch.tensor([0]), torch.zeros(1, 6, 48, 64)
    with torch.no_grad():
        whole = block(x)
        _, keys, values = model.attend(block, x[:, :32], zeros, zeros, none, torch.tensor([32]))
        past_k, past_v = keys[:, :, 32:], values[:, :, 32:]  # 32 held of 48
        tail, _, _ = model.attend(block, x[:, 32:], past_k, past_v, torch.tensor([32]), torch.tensor([16]))
    torch.testing.assert_close(tail, whole[:, 32:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("trainable_layers", [0, 2, 4])
def test_training_on_cached_outputs_computes_what_is_served(encoder, trainable_layers, tmp_path):
    torch.manual_seed(0)
    model = CachedEncoderCTC(CachedEncoderCTCConfig(left_frames=64, head_hidden=32,
                                                    trainable_layers=trainable_layers), encoder).eval()
    assert_training_computes_what_is_served(model, 32, tmp_path)  # one block of silence


def test_position_jitter_needs_every_block_trainable():
    with pytest.raises(ValueError, match="every block trainable"):
        CachedEncoderCTC(CachedEncoderCTCConfig(trainable_layers=2, position_jitter=True), encoder=load_encoder())


def test_the_service_serves_it_over_a_real_channel(exported, make_server):
    srv = make_server(model=exported[0])
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as ch:
        stub = asr_pb2_grpc.SpeechStub(ch)
        info = stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=10)
        assert info.name == "ctc-whisper" and info.version == "step3" and info.has_language_model
        assert info.lookahead.ToTimedelta().total_seconds() == 0
        assert info.chunk_duration.ToTimedelta().total_seconds() == pytest.approx(0.32)
        reply = stub.Recognize(asr_pb2.RecognizeRequest(audio_content=(SAMPLES / "what_time.wav").read_bytes()),
                               timeout=30)
        assert len(reply.results) == 1  # an untrained head: any text, but a whole answer


def test_the_service_benchmark_measures_two_models_side_by_side(exported):
    result = subprocess.run([sys.executable, "-m", "service.tools.benchmark", "--streams", "2", "--seconds", "3",
                             "--unary-requests", "2", "--held-final-ms", "5000",
                             "--models", f"{BUNDLED},{exported[0]}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| default", "| model"))]
    assert [(r[0].strip(), r[1].strip(), r[-1].strip()) for r in rows] == [("default", "2", "0"), ("model", "2", "0")]
    first_text = int(rows[0][3].split("/")[0])  # ms from a stream's first audio to its first word
    assert 0 < first_text < 3000  # the bundled model hears the sample clips' first words
    assert "model: model ctc-whisper step3 on CPUExecutionProvider; 320 ms chunks, 0 ms look-ahead" in result.stdout
    bundled = ModelSpec.load(BUNDLED)
    look_ahead = round(bundled.lookahead_frames * bundled.features.hop_length / bundled.features.sample_rate * 1000)
    assert f"default: model ctc-whisper-tiny {bundled.version}" in result.stdout
    assert f"{look_ahead} ms look-ahead" in result.stdout.split("default: ")[1].splitlines()[0]
    assert "model: most streams held (p95 partial <= 150 ms, p95 final <= 5000 ms, no errors): " in result.stdout


def test_idle_streams_are_held_and_their_memory_measured(exported):
    result = subprocess.run([sys.executable, "-m", "service.tools.idle_streams", "--streams", "6", "--ramp-seconds",
                             "1", "--settle-seconds", "1", "--models", str(exported[0])], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[-1]  # the exported directory is named "model"
    assert row.startswith("| model | 6 |")
    assert "{'held': 6}" in row  # every stream still open when measured: none refused, ended or timed out
