"""/metrics, scraped over HTTP, counts what the server did."""

import urllib.request

import grpc
import pytest
from conftest import SAMPLES
from prometheus_client.parser import text_string_to_metric_families
from test_recognize import pcm16, recognize, stream, word_errors

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc

FIRST_PASS = {"pass": "first"}  # the canary label of a model without a second pass

def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_latency_and_audio_are_counted(running, stub):
    before = scrape(running.metrics_port)
    audio = (SAMPLES / "what_time.wav").read_bytes()
    stub.Recognize(asr_pb2.RecognizeRequest(audio_content=audio), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Recognize(asr_pb2.RecognizeRequest(audio_content=b"junk"), timeout=30)
    pcm, rate = pcm16("what_time.wav")
    stream(stub, pcm, 3200, interim=True, encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=rate)
    after = scrape(running.metrics_port)

    model = running.speech.spec.name  # latency and inference carry the model that served the call

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("asr_requests_total", method="Recognize", code="OK") == 1
    assert delta("asr_requests_total", method="Recognize", code="INVALID_ARGUMENT") == 1
    assert delta("asr_requests_total", method="StreamingRecognize", code="OK") == 1
    assert delta("asr_request_duration_seconds_count", method="Recognize", traffic="user", model=model) == 1
    assert delta("asr_final_latency_seconds_count", traffic="user", model=model) == 1
    assert delta("asr_partial_latency_seconds_count", traffic="user", model=model) >= 5
    assert delta("asr_first_result_latency_seconds_count", traffic="user", model=model) == 1
    assert delta("asr_audio_seconds_total") == pytest.approx(2 * 26424 / 16000, abs=0.01)
    assert delta("asr_inference_seconds_count", provider="CPUExecutionProvider", model=model) > 5
    assert value(after, "asr_active_streams") == 0
    spec = running.speech.spec
    assert value(after, "asr_model_info", model=spec.name, version=spec.version, provider="CPUExecutionProvider") == 1


def test_canaries_feed_running_accuracy(make_server):
    srv = make_server(max_canary_sets=3)
    audio = (SAMPLES / "what_time.wav").read_bytes()
    references = {"a": "what time is it in london", "b": "what time is it in paris", "c": "what time is it"}
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        scores = [stub.Recognize(asr_pb2.RecognizeRequest(audio_content=audio, config=asr_pb2.RecognitionConfig(
            canary=asr_pb2.CanaryLabel(reference=ref, set=name))), timeout=30).canary_score
            for name, ref in references.items()]
        said = recognize(stub, audio).results[0].alternatives[0].transcript
    samples = scrape(srv.running.metrics_port)
    model = srv.running.speech.spec.name
    errors = [word_errors(ref, said) for ref in references.values()]
    assert [s.word_errors for s in scores] == errors and errors[0] >= 1 and errors[2] >= 2  # "c": two words more
    assert value(samples, "asr_canary_word_errors_total", set="a", model=model, **FIRST_PASS) == errors[0]
    assert value(samples, "asr_canary_reference_words_total", set="a", model=model, **FIRST_PASS) == 6
    assert value(samples, "asr_canary_wer", set="a", model=model, **FIRST_PASS) == pytest.approx(errors[0] / 6)
    # three set labels at most, "default" and "other" included: sets b and c fold into "other"
    assert value(samples, "asr_canary_requests_total", set="other", model=model, **FIRST_PASS) == 2
    labels = {dict(labels)["set"] for (name, labels) in samples if name == "asr_canary_requests_total"}
    assert labels == {"default", "a", "other"}
    assert value(samples, "asr_canary_wer", set="other", model=model, **FIRST_PASS) == pytest.approx(
        (errors[1] + errors[2]) / 10)
    assert value(samples, "asr_request_duration_seconds_count", method="Recognize", traffic="canary",
                 model=model) == 3


def test_pinned_canary_sets_cannot_be_taken_by_callers(make_server):
    """With --canary-sets, the first sets callers send do not take the labels: only the pinned do."""
    srv = make_server(canary_sets="real")
    audio = (SAMPLES / "what_time.wav").read_bytes()
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        for name in [f"made-up-{i}" for i in range(12)] + ["real"]:
            stub.Recognize(asr_pb2.RecognizeRequest(audio_content=audio, config=asr_pb2.RecognitionConfig(
                canary=asr_pb2.CanaryLabel(reference="what time is it in london", set=name))), timeout=30)
    samples = scrape(srv.running.metrics_port)
    labels = {dict(labels)["set"] for (name, labels) in samples if name == "asr_canary_requests_total"}
    assert labels == {"default", "real", "other"}
    model = srv.running.speech.spec.name
    assert value(samples, "asr_canary_requests_total", set="other", model=model, **FIRST_PASS) == 12
    assert value(samples, "asr_canary_requests_total", set="real", model=model, **FIRST_PASS) == 1
