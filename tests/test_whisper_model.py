"""The shipped Whisper encoder-CTC model (models/pretrained/whisper-ctc), served over a real channel
like the bundled GRU model: unary, streamed with interim results, and its declared timing."""

from dataclasses import replace

import grpc
import pytest
import soundfile as sf

from conftest import ROOT, SAMPLES, TEST_CONFIG, ServerThread
from ctc_asr.v1 import asr_pb2, asr_pb2_grpc

WHISPER_CTC = ROOT / "models" / "pretrained" / "whisper-ctc"
Encoding = asr_pb2.RecognitionConfig.AudioEncoding


@pytest.fixture(scope="module")
def whisper_stub():
    srv = ServerThread(replace(TEST_CONFIG, model=WHISPER_CTC))
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as ch:
        yield asr_pb2_grpc.SpeechStub(ch)
    srv.close()


def test_it_declares_its_model_and_timing(whisper_stub):
    info = whisper_stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=10)
    assert (info.name, info.version, info.has_language_model) == ("ctc-whisper-tiny", "0.1.0", True)
    assert info.chunk_duration.ToTimedelta().total_seconds() == pytest.approx(0.32)
    assert info.lookahead.ToTimedelta().total_seconds() == pytest.approx(0.16)


def test_it_transcribes_the_sample_unary_and_streamed(whisper_stub):
    reply = whisper_stub.Recognize(asr_pb2.RecognizeRequest(
        config=asr_pb2.RecognitionConfig(enable_word_time_offsets=True),
        audio_content=(SAMPLES / "what_time.wav").read_bytes()), timeout=30)
    alt = reply.results[0].alternatives[0]
    assert alt.transcript == "what time is it in paris"
    assert [w.word for w in alt.words] == alt.transcript.split()
    ends = [w.end_time.ToTimedelta().total_seconds() for w in alt.words]
    assert ends == sorted(ends) and ends[-1] <= sf.info(SAMPLES / "what_time.wav").duration + 0.05

    audio, rate = sf.read(SAMPLES / "what_time.wav", dtype="int16")
    pcm, step = audio.tobytes(), rate // 10 * 2  # 100 ms messages

    def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=Encoding.LINEAR16, sample_rate_hertz=rate),
            interim_results=True))
        for i in range(0, len(pcm), step):
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[i:i + step])

    results = [r for resp in whisper_stub.StreamingRecognize(requests(), timeout=30) for r in resp.results]
    assert any(not r.is_final for r in results)  # interim results while the audio arrives
    assert [r.alternatives[0].transcript for r in results if r.is_final] == ["what time is it in paris"]
