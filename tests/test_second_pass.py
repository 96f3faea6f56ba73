"""A model directory with a second pass (Whisper tiny.en's decoder, `python -m export.second_pass`):
its finals are the second pass's, its interim results still the first pass's; one without serves as
before (every other test)."""

import json
import subprocess
import sys
from dataclasses import replace

import grpc
import numpy as np
import pytest
from conftest import BUNDLED, SAMPLES, TEST_CONFIG, ServerThread, place
from test_recognize import pcm16, recognize, stream

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.decoder.ctc import CtcDecoder, Hypothesis
from engine.manifest import read_audio
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from engine.recognizer import HALF_CLOSE, Final, Recognizer
from engine.second_pass import load
from engine.text import spoken

# The bundled model's first pass hears "three two zero zero five ..." in phone.flac; Whisper tiny.en
# (greedy and beam 5 alike) writes 320591457, one zero less: a final that says so is the second pass's.
PHONE_SECOND = "my phone number is three two zero five nine one four five seven"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = place(BUNDLED, tmp_path_factory.mktemp("second_pass") / "model")
    (directory / "checkpoint.pt").unlink(missing_ok=True)
    run = subprocess.run([sys.executable, "-m", "export.second_pass", "--model-dir", directory],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    # the service's runtime decodes as CTranslate2's own Whisper does, token for token
    assert run.stdout.count("greedy tokens the same as CTranslate2's") == 2, run.stdout
    assert json.loads((directory / "model.json").read_text())["second_pass"]["kind"] == "whisper"
    return directory


@pytest.fixture(scope="module")
def second(model_dir):
    srv = ServerThread(replace(TEST_CONFIG, model=str(model_dir)))
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        yield asr_pb2_grpc.SpeechStub(channel)
    srv.close()


def test_finals_are_the_second_pass_and_interim_results_the_first(second, model_dir):
    pcm, rate = pcm16("phone.flac")
    responses = stream(second, pcm, 3200, interim=True, encoding=asr_pb2.RecognitionConfig.LINEAR16,
                       sample_rate_hertz=rate)
    finals = [r.results[0].alternatives[0].transcript for r in responses if r.results and r.results[0].is_final]
    interim = [r.results[0].alternatives[0].transcript for r in responses if r.results and not r.results[0].is_final]
    assert finals == [PHONE_SECOND]
    assert any("three two zero zero" in t for t in interim), interim  # the first pass, as it heard it
    written = load(model_dir, json.loads((model_dir / "model.json").read_text())["second_pass"]).transcribe(
        read_audio(SAMPLES / "phone.flac", 16000))
    assert spoken(written) == PHONE_SECOND


def test_punctuation_gives_the_second_pass_as_written(second):
    response = recognize(second, (SAMPLES / "what_time.wav").read_bytes(), enable_automatic_punctuation=True)
    assert response.results[0].alternatives[0].transcript == "What time is it in Paris?"
    plain = recognize(second, (SAMPLES / "what_time.wav").read_bytes())
    assert plain.results[0].alternatives[0].transcript == "what time is it in paris"


def test_a_model_without_a_second_pass_ignores_punctuation(stub):
    response = recognize(stub, (SAMPLES / "what_time.wav").read_bytes(), enable_automatic_punctuation=True)
    assert response.results[0].alternatives[0].transcript == "what time is it in paris"


def test_a_declared_second_pass_without_its_files_is_refused(model_dir, tmp_path):
    broken = place(model_dir, tmp_path / "broken")
    for graph in (broken / "second_pass").glob("*.onnx"):
        graph.unlink()
    run = subprocess.run([sys.executable, "-m", "service", "--port", "0", "--metrics-port", "0", "--http-port", "0",
                          "--provider", "cpu", "--model", broken], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "the second pass cannot be loaded" in run.stderr, run.stderr[-2000:]


def test_hotwords_reach_the_second_pass(second):
    """The request's phrases are Whisper's prompt: the zero it drops in phone.flac comes back."""
    phrase = asr_pb2.SpeechContext(phrases=["My phone number is 3200591457"])
    response = recognize(second, (SAMPLES / "phone.flac").read_bytes(), speech_contexts=[phrase])
    assert response.results[0].alternatives[0].transcript == (
        "my phone number is three two zero zero five nine one four five seven")


def test_a_final_the_first_pass_is_sure_of_is_kept(model_dir):
    """Where the first pass's confidence reaches `keep_first_above` (0.9) its final stands: on the wake
    words the second pass was far worse (the model card's Experiments)."""
    spec = ModelSpec.load(model_dir)
    recognizer = Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec), second_pass=load(model_dir, spec.second_pass))
    audio = read_audio(SAMPLES / "phone.flac", 16000)
    first = Hypothesis("my phone number is three two zero zero five nine one four five seven", 0.95, ())
    assert recognizer.rewrite(Final([first], HALF_CLOSE, 4.0, audio)).hypotheses[0].text == first.text
    unsure = recognizer.rewrite(Final([first._replace(confidence=0.5)], HALF_CLOSE, 4.0, audio))
    assert unsure.hypotheses[0].text == PHONE_SECOND and unsure.written.startswith("My phone number")


def test_many_hotwords_on_a_long_utterance_stay_within_the_decoder(model_dir):
    """The most phrases a request may send, as a prompt, leave the text room within Whisper's 448
    positions (past them the decoder would fail the call), and an utterance longer than the second
    pass hears keeps the first pass's final."""
    whisper = load(model_dir, json.loads((model_dir / "model.json").read_text())["second_pass"])
    prompt = whisper.prompt_of(tuple(f"phrase number {i} of a hundred, each of them long enough" for i in range(100)))
    assert len(prompt) + whisper.most_tokens(len(prompt), 30.0) <= 448 and whisper.most_tokens(len(prompt), 30.0) > 200
    spec = ModelSpec.load(model_dir)
    recognizer = Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec), second_pass=whisper)
    first = Hypothesis("what time is it in paris", 0.5, ())
    long = np.tile(read_audio(SAMPLES / "what_time.wav", 16000), 20)  # 34 s
    assert recognizer.rewrite(Final([first], HALF_CLOSE, 34.0, long)).hypotheses[0] == first
