"""NVIDIA Riva ASR over the gRPC port, driven by NVIDIA's own client (`nvidia-riva-client`'s
`ASRService`) pointed at a real server: what a team that leaves a Riva server keeps."""

import grpc
import pytest
import riva.client
import soundfile as sf
from conftest import SAMPLES
from riva.client.proto import riva_asr_pb2
from test_metrics import scrape, value
from test_recognize import heard

from ctc_asr.v1 import asr_pb2

WAV = (SAMPLES / "what_time.wav").read_bytes()
PCM = sf.read(SAMPLES / "what_time.wav", dtype="int16")[0].tobytes()



def config(**fields) -> riva.client.RecognitionConfig:
    defaults = dict(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000, language_code="en-US",
                    max_alternatives=1, verbatim_transcripts=True)
    return riva.client.RecognitionConfig(**{**defaults, **fields})


@pytest.fixture(scope="module")
def asr(running):
    return riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{running.port}"))


def stream(asr, pcm=PCM, **fields):
    sc = riva.client.StreamingRecognitionConfig(config=config(**fields), interim_results=True)
    return [r.results[0] for r in asr.streaming_response_generator(
        (pcm[i:i + 3200] for i in range(0, len(pcm), 3200)), sc) if r.results]


def test_offline_recognize_takes_rivas_wav_files_and_raw_audio_with_word_times_in_milliseconds(asr):
    for audio in (WAV, PCM):  # Riva's offline scripts send the whole file, header and all
        [result] = asr.offline_recognize(audio, config(enable_word_time_offsets=True)).results
        best = result.alternatives[0]
        assert heard(best.transcript, "what_time.wav") and list(best.language_code) == ["en-US"]
        assert [w.word for w in best.words] == best.transcript.split()
        assert all(0 <= w.start_time < w.end_time <= 1700 for w in best.words)  # milliseconds
        assert abs(result.audio_processed - len(PCM) / 2 / 16000) < 0.01
    phone = (SAMPLES / "phone.flac").read_bytes()
    flac = dict(encoding=riva.client.AudioEncoding.FLAC, sample_rate_hertz=0)
    verbatim = asr.offline_recognize(phone, config(**flac)).results[0].alternatives[0].transcript
    normalized = asr.offline_recognize(phone, config(verbatim_transcripts=False, **flac)).results[0]
    assert heard(verbatim, "phone.flac") and not any(c.isdigit() for c in verbatim)
    assert sum(c.isdigit() for c in normalized.alternatives[0].transcript) >= 8  # Riva's inverse normalization


def test_streaming_gives_rivas_client_interim_results_then_the_final(asr):
    results = stream(asr)
    assert results[-1].is_final and heard(results[-1].alternatives[0].transcript, "what_time.wav")
    interim = results[:-1]
    assert len(interim) >= 3 and not any(r.is_final for r in interim)
    assert all(0 < r.stability <= 1 for r in interim)
    assert [round(r.audio_processed, 2) for r in interim] == sorted(round(r.audio_processed, 2) for r in interim)


def test_the_models_are_listed_as_rivas_clients_read_them(asr, running):
    models = asr.stub.GetRivaSpeechRecognitionConfig(riva_asr_pb2.RivaSpeechRecognitionConfigRequest()).model_config
    served = running.speech.models.default
    assert [m.model_name for m in models] == [served.name]
    assert models[0].parameters["sample_rate"] == "16000" and models[0].parameters["language_code"] == "en"
    with pytest.raises(grpc.RpcError) as err:
        asr.stub.GetRivaSpeechRecognitionConfig(riva_asr_pb2.RivaSpeechRecognitionConfigRequest(model_name="nope"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and served.name in err.value.details()


@pytest.mark.parametrize("fields, says", [
    (dict(language_code="de-DE"), "language_code 'de-DE' is not served"),
    (dict(encoding=riva.client.AudioEncoding.OGGOPUS), "config.encoding: OGGOPUS is not supported"),
    (dict(enable_separate_recognition_per_channel=True), "per_channel"),
    (dict(model="no-such-model"), "is not served; this server serves"),
])
def test_what_this_server_cannot_do_is_refused_by_field_as_invalid_argument(asr, running, fields, says):
    before = scrape(running.metrics_port)
    for call in (lambda: asr.offline_recognize(PCM, config(**fields)), lambda: stream(asr, **fields)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in err.value.details()
    after = scrape(running.metrics_port)
    for method in ("riva.Recognize", "riva.StreamingRecognize"):
        labels = dict(method=method, code="INVALID_ARGUMENT")
        assert value(after, "asr_requests_total", **labels) - value(before, "asr_requests_total", **labels) == 1


def test_rivas_client_needs_the_servers_bearer_token(make_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("the-secret\n")
    srv = make_server(auth_tokens_file=tokens)
    uri = f"127.0.0.1:{srv.running.port}"
    anonymous = riva.client.ASRService(riva.client.Auth(uri=uri))
    with pytest.raises(grpc.RpcError) as err:
        anonymous.offline_recognize(WAV, config())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        stream(anonymous)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    asr = riva.client.ASRService(riva.client.Auth(uri=uri, metadata_args=[["authorization", "Bearer the-secret"]]))
    assert heard(asr.offline_recognize(WAV, config()).results[0].alternatives[0].transcript, "what_time.wav")
    assert stream(asr)[-1].is_final


def test_rivas_transcripts_equal_our_own_apis_on_the_same_audio(asr, stub):
    ours = stub.Recognize(asr_pb2.RecognizeRequest(audio_content=WAV), timeout=60).results[0].alternatives[0]
    assert asr.offline_recognize(WAV, config()).results[0].alternatives[0].transcript == ours.transcript
    assert stream(asr)[-1].alternatives[0].transcript == ours.transcript
