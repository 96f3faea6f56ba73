"""/metrics, scraped over HTTP, counts what the server did."""

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ctc_asr.v1 import asr_pb2
from conftest import SAMPLES
from test_recognize import pcm16, stream


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

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("asr_requests_total", method="Recognize", code="OK") == 1
    assert delta("asr_requests_total", method="Recognize", code="INVALID_ARGUMENT") == 1
    assert delta("asr_requests_total", method="StreamingRecognize", code="OK") == 1
    assert delta("asr_request_duration_seconds_count", method="Recognize", traffic="user") == 1
    assert delta("asr_final_latency_seconds_count", traffic="user") == 1
    assert delta("asr_partial_latency_seconds_count", traffic="user") >= 5
    assert delta("asr_first_result_latency_seconds_count", traffic="user") == 1
    assert delta("asr_audio_seconds_total") == pytest.approx(2 * 26424 / 16000, abs=0.01)
    assert delta("asr_inference_seconds_count", provider="CPUExecutionProvider") > 5
    assert value(after, "asr_active_streams") == 0
    spec = running.servicer.spec
    assert value(after, "asr_model_info", model=spec.name, version=spec.version, provider="CPUExecutionProvider") == 1
