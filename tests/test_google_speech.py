"""Google Cloud Speech-to-Text v1 over the gRPC port, driven by Google's own client library
(`google-cloud-speech`) pointed at a real server: what a team that leaves Google's cloud keeps."""

import grpc
import pytest
import soundfile as sf
from conftest import SAMPLES
from google.api_core import exceptions
from google.cloud import speech
from google.cloud.speech_v1.services.speech import SpeechClient
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcTransport
from test_metrics import scrape, value
from test_recognize import heard

from ctc_asr.v1 import asr_pb2

WAV = (SAMPLES / "what_time.wav").read_bytes()
PCM = sf.read(SAMPLES / "what_time.wav", dtype="int16")[0].tobytes()
Encoding = speech.RecognitionConfig.AudioEncoding
Event = speech.StreamingRecognizeResponse.SpeechEventType



@pytest.fixture(scope="module")
def client(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield speech.SpeechClient(transport=SpeechGrpcTransport(channel=channel))


def recognize(client, audio=WAV, **config):
    return client.recognize(config=speech.RecognitionConfig(language_code="en-US", **config),
                            audio=speech.RecognitionAudio(content=audio), timeout=60)


def stream(client, pcm=PCM, **options):
    config = speech.StreamingRecognitionConfig(
        config=speech.RecognitionConfig(encoding=Encoding.LINEAR16, sample_rate_hertz=16000, language_code="en-US"),
        **options)
    requests = (speech.StreamingRecognizeRequest(audio_content=pcm[i:i + 3200]) for i in range(0, len(pcm), 3200))
    return list(client.streaming_recognize(config=config, requests=requests, timeout=60))


def test_recognize_answers_googles_client_with_words_timed_and_billed(client):
    plain = recognize(client)
    [result] = plain.results
    assert heard(result.alternatives[0].transcript, "what_time.wav")
    assert result.language_code == "en-us" and not result.alternatives[0].words
    assert abs(plain.total_billed_time.total_seconds() - len(PCM) / 2 / 16000) < 0.01
    # Google allows up to 30 alternatives (it may send fewer); this server sends at most 10
    timed = recognize(client, enable_word_time_offsets=True, max_alternatives=30).results[0]
    words = timed.alternatives[0].words
    assert [w.word for w in words] == timed.alternatives[0].transcript.split()
    assert all(0 <= w.start_time.total_seconds() < w.end_time.total_seconds() <= 1.7 for w in words)
    assert all(w.confidence == 0 for w in words)  # only with enable_word_confidence, as Google's
    assert 1 <= len(timed.alternatives) <= 10
    confident = recognize(client, enable_word_confidence=True).results[0].alternatives[0].words
    assert all(0 < w.confidence <= 1 and w.end_time.total_seconds() == 0 for w in confident)
    # Google's model names serve this server's default model
    assert heard(recognize(client, model="latest_short").results[0].alternatives[0].transcript, "what_time.wav")


def test_streaming_recognize_gives_googles_client_interim_results_then_the_final(client):
    responses = stream(client, interim_results=True)
    results = [r.results[0] for r in responses if r.results]
    assert not results[-1].alternatives[0].confidence == 0 and results[-1].is_final
    assert heard(results[-1].alternatives[0].transcript, "what_time.wav")
    interim = [r for r in results if not r.is_final]
    assert len(interim) >= 3 and all(0 < r.stability <= 1 and r.alternatives[0].confidence == 0 for r in interim)
    assert all(r.speech_event_type == Event.SPEECH_EVENT_UNSPECIFIED for r in responses)  # not asked for
    assert responses[-1].total_billed_time.total_seconds() > 1.6
    without = stream(client)
    assert [r.results[0].is_final for r in without if r.results] == [True]


def test_speech_events_and_single_utterance_as_google_sends_them(client):
    silence = b"\x00\x00" * 16000 * 2
    responses = stream(client, pcm=PCM + silence + PCM, enable_voice_activity_events=True, single_utterance=True)
    events = [r.speech_event_type for r in responses if r.speech_event_type]
    assert events[0] == Event.SPEECH_ACTIVITY_BEGIN and Event.END_OF_SINGLE_UTTERANCE in events
    finals = [r.results[0].alternatives[0].transcript for r in responses if r.results and r.results[0].is_final]
    assert heard(finals, "what_time.wav")  # the first utterance only: the call ends with it


@pytest.mark.parametrize("config, says", [
    (dict(language_code="de-DE"), "language_code 'de-DE' is not served"),
    (dict(encoding=Encoding.MP3), "config.encoding: MP3 is not supported"),
    (dict(alternative_language_codes=["fr-FR"]), "alternative_language_codes: 'fr-FR' is not served"),
    (dict(diarization_config=speech.SpeakerDiarizationConfig(enable_speaker_diarization=True)), "diarization"),
    (dict(enable_separate_recognition_per_channel=True, audio_channel_count=2), "per_channel"),
    (dict(model="no-such-model"), "is not served; this server serves"),
])
def test_what_this_server_cannot_do_is_refused_by_field_as_invalid_argument(client, config, says):
    with pytest.raises(exceptions.InvalidArgument, match=says):
        client.recognize(config=speech.RecognitionConfig(**{"language_code": "en-US", **config}),
                         audio=speech.RecognitionAudio(content=WAV), timeout=60)


def test_an_audio_uri_is_refused_and_calls_are_counted_under_googles_method_names(client, running):
    before = scrape(running.metrics_port)
    with pytest.raises(exceptions.InvalidArgument, match="audio.uri"):
        client.recognize(config=speech.RecognitionConfig(language_code="en-US"),
                         audio=speech.RecognitionAudio(uri="gs://bucket/audio.flac"), timeout=60)
    recognize(client)
    stream(client)
    after = scrape(running.metrics_port)
    for method, code in (("google.Recognize", "INVALID_ARGUMENT"), ("google.Recognize", "OK"),
                         ("google.StreamingRecognize", "OK")):
        labels = dict(method=method, code=code)
        assert value(after, "asr_requests_total", **labels) - value(before, "asr_requests_total", **labels) == 1


def test_googles_client_needs_the_servers_bearer_token(make_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("the-secret\nother-secret\n")
    srv = make_server(auth_tokens_file=tokens)
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        client = speech.SpeechClient(transport=SpeechGrpcTransport(channel=channel))
        with pytest.raises(exceptions.Unauthenticated):
            recognize(client)
        with pytest.raises(exceptions.Unauthenticated):
            stream(client)
        said = client.recognize(config=speech.RecognitionConfig(language_code="en-US"),
                                audio=speech.RecognitionAudio(content=WAV), timeout=60,
                                metadata=[("authorization", "Bearer the-secret")])
        assert heard(said.results[0].alternatives[0].transcript, "what_time.wav")
        # google-cloud-speech's streaming_recognize helper drops `metadata`; its generated method keeps it
        config = speech.StreamingRecognitionConfig(config=speech.RecognitionConfig(
            encoding=Encoding.LINEAR16, sample_rate_hertz=16000, language_code="en-US"))
        requests = [speech.StreamingRecognizeRequest(streaming_config=config),
                    speech.StreamingRecognizeRequest(audio_content=PCM)]
        responses = list(SpeechClient.streaming_recognize(client, requests=iter(requests), timeout=60,
                                                          metadata=[("authorization", "Bearer the-secret")]))
        assert heard(responses[-1].results[0].alternatives[0].transcript, "what_time.wav")
        # an operation is its caller's: another token's client cannot read, cancel or delete it
        operation = SpeechClient.long_running_recognize(
            client, config=speech.RecognitionConfig(language_code="en-US"), audio=speech.RecognitionAudio(content=WAV),
            timeout=60, metadata=[("authorization", "Bearer the-secret")])
        operations = client._transport.operations_client
        with pytest.raises(exceptions.NotFound):
            operations.get_operation(operation.operation.name, metadata=[("authorization", "Bearer other-secret")])
        done = operations.get_operation(operation.operation.name, metadata=[("authorization", "Bearer the-secret")])
        assert done.name == operation.operation.name


def test_long_running_recognize_is_an_operation_polled_to_its_results(client, stub):
    pcm = PCM + b"\x00\x00" * 16000 * 2 + PCM
    operation = client.long_running_recognize(
        config=speech.RecognitionConfig(encoding=Encoding.LINEAR16, sample_rate_hertz=16000, language_code="en-US"),
        audio=speech.RecognitionAudio(content=pcm), timeout=60)
    response = operation.result(timeout=60)  # the client polls google.longrunning.Operations/GetOperation
    assert heard([r.alternatives[0].transcript for r in response.results], "what_time.wav", "what_time.wav")
    assert response.results[0].result_end_time.total_seconds() < response.results[1].result_end_time.total_seconds()
    assert abs(response.total_billed_time.total_seconds() - len(pcm) / 2 / 16000) < 0.01
    assert operation.metadata.progress_percent == 100
    assert operation.metadata.last_update_time >= operation.metadata.start_time
    operations = client._transport.operations_client
    assert operations.get_operation(operation.operation.name).done
    operations.delete_operation(operation.operation.name)
    with pytest.raises(exceptions.NotFound):
        operations.get_operation(operation.operation.name)
    broken = client.long_running_recognize(config=speech.RecognitionConfig(language_code="en-US"),
                                           audio=speech.RecognitionAudio(content=b"not audio at all" * 100), timeout=60)
    with pytest.raises(exceptions.InvalidArgument):  # audio that cannot be decoded: the operation's error
        broken.result(timeout=60)
    with pytest.raises(exceptions.InvalidArgument, match="de-DE"):  # a bad config is refused by the call itself
        client.long_running_recognize(config=speech.RecognitionConfig(language_code="de-DE"),
                                      audio=speech.RecognitionAudio(content=WAV), timeout=60)


def test_googles_transcripts_equal_our_own_apis_on_the_same_audio(client, stub):
    ours = stub.Recognize(asr_pb2.RecognizeRequest(audio_content=WAV), timeout=60).results[0].alternatives[0]
    assert recognize(client).results[0].alternatives[0].transcript == ours.transcript
    assert stream(client)[-1].results[0].alternatives[0].transcript == ours.transcript
