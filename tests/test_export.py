"""python -m export: the model directory it writes serves, and parity is checked."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from conftest import BUNDLED, ROOT, SAMPLES

from engine.decoder.ctc import CtcDecoder, DecodeOptions
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from engine.recognizer import Recognizer
from models.model import StreamingCTC, init_from, load_checkpoint, save_checkpoint

GRU_CKPT = ROOT / "models" / "previous" / "ctc-gru-default-0.7.1" / "checkpoint.pt"


def export(out, *extra, ckpt=GRU_CKPT):
    return subprocess.run([sys.executable, "-m", "export", "--ckpt", str(ckpt), "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def transcribe(directory, clip="what_time.wav"):
    """A sample clip streamed through the model directory in 160 ms pieces: the final
    hypothesis, and how much of the audio the model outputs covered after each piece."""
    audio, rate = sf.read(SAMPLES / clip, dtype="float32")
    spec = ModelSpec.load(directory)
    recognizer = Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec))
    stream = recognizer.new_stream(DecodeOptions(beam_width=25, lm_weight=0.5, word_bonus=1.0))
    heard = []
    for i in range(0, len(audio), int(0.16 * rate)):
        recognizer.accept(stream, audio[i:i + int(0.16 * rate)])
        heard.append(recognizer.heard(stream))
    return recognizer.finish(stream).finals[0].hypotheses[0], heard


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    result = export(out, "--lm-dir", str(BUNDLED))
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_parity_is_printed_and_within_tolerance(exported):
    _, stdout = exported
    for check in ("onnx_vs_pytorch", "chunked_vs_whole", "batched_vs_single"):
        line = next(out for out in stdout.splitlines() if out.startswith(f"parity {check}"))
        assert line.endswith("(ok)")
        assert float(line.split("= ")[1].split()[0]) <= 1e-3


def test_the_exported_gru_model_transcribes_the_sample(exported):
    out, _ = exported
    assert transcribe(out)[0].text == "what time is it in paris"


def test_a_look_ahead_model_reports_words_at_the_times_they_were_said(tmp_path):
    # A causal model (the bundled weights up to the GRU) and the same weights under a look-ahead
    # layer that starts at zero compute the same outputs, the second two frames (80 ms) later:
    # the service must hear the same words at the same times from both.
    model, ckpt = load_checkpoint(GRU_CKPT)
    causal = StreamingCTC(replace(model.cfg, lookahead=0))
    causal.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if not k.startswith("lookahead.")})
    save_checkpoint(tmp_path / "causal.pt", causal, ckpt["feature_config"], {})
    ahead = StreamingCTC(replace(model.cfg, lookahead=2))
    init_from(ahead, tmp_path / "causal.pt")
    save_checkpoint(tmp_path / "ahead.pt", ahead, ckpt["feature_config"], {})
    for name in ("causal", "ahead"):
        result = export(tmp_path / name, "--lm-dir", str(BUNDLED), ckpt=tmp_path / f"{name}.pt")
        assert result.returncode == 0, result.stderr
    spec = ModelSpec.load(tmp_path / "ahead")
    assert spec.lookahead_frames == 8 and spec.delay_frames == 2 and len(spec.states) == 4
    (late, late_heard), (now, now_heard) = transcribe(tmp_path / "ahead"), transcribe(tmp_path / "causal")
    assert late.text == now.text and len(now.words) >= 4
    times = [[t for w in hyp.words for t in (w.start, w.end)] for hyp in (late, now)]
    assert times[0] == pytest.approx(times[1])
    assert late_heard == pytest.approx([max(0.0, t - 0.08) for t in now_heard])  # interim result ends


def test_chunked_with_state_equals_whole_utterance(exported):
    out, _ = exported
    spec = ModelSpec.load(out)
    session = ModelSession(spec, "cpu")
    rng = np.random.default_rng(0)
    feats = rng.normal(-4, 3, (spec.chunk_frames * 10, spec.features.n_mels)).astype(np.float32)
    whole, _ = session.step(feats, session.initial_state())
    state, chunks = session.initial_state(), []
    for i in range(0, len(feats), spec.chunk_frames):
        out_chunk, state = session.step(feats[i:i + spec.chunk_frames], state)
        chunks.append(out_chunk)
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4)


def test_parity_failure_exits_nonzero(tmp_path):
    result = export(tmp_path, "--tolerance", "0")
    assert result.returncode == 1
    assert "parity check failed" in result.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "export", "--ckpt", str(tmp_path / "nope.pt"),
                             "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "no such file" in result.stderr
