"""Deadlines, cancellation, idle streams and graceful shutdown."""

import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from conftest import ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_recognize import heard
from test_streaming import finals, pcm

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.tools.loadgen import free_port

CONFIG = asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
    config=asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=16000)))


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def slow_requests(stop: threading.Event):
    yield CONFIG
    while not stop.is_set():
        yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\x00\x00" * 1600)
        stop.wait(0.1)


def test_deadline_and_cancel_free_the_stream_at_once(running, stub):
    speech = running.speech
    stop = threading.Event()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamingRecognize(slow_requests(stop), timeout=1.0))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: speech.admission.streams == 0, 2.0)
    call = stub.StreamingRecognize(slow_requests(stop), timeout=30)
    assert wait_for(lambda: speech.admission.streams == 1)
    call.cancel()
    assert wait_for(lambda: speech.admission.streams == 0, 2.0)
    stop.set()


def test_a_silent_client_is_timed_out(make_server):
    srv = make_server(stream_idle_timeout_seconds=1.0)
    release = threading.Event()

    def stuck():
        yield CONFIG
        release.wait(20)

    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(asr_pb2_grpc.SpeechStub(channel).StreamingRecognize(stuck(), timeout=20))
        release.set()
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and "audio timeout" in err.value.details()
    assert time.monotonic() - started < 10
    assert srv.running.speech.admission.streams == 0


def test_sigterm_drains_in_flight_streams_and_exits_cleanly():
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
                               "--metrics-host", "127.0.0.1", "--metrics-port", str(free_port()), "--http-port", "0",
                               "--provider", "cpu", "--grace-seconds", "20"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = asr_pb2_grpc.SpeechStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            audio, terminated = pcm("what_time.wav"), threading.Event()

            def requests():  # half the audio, then SIGTERM, then the rest and half-close
                yield CONFIG
                half = len(audio) // 2
                yield asr_pb2.StreamingRecognizeRequest(audio_content=audio[:half])
                terminated.wait(10)
                time.sleep(0.5)
                yield asr_pb2.StreamingRecognizeRequest(audio_content=audio[half:])

            call = stub.StreamingRecognize(requests(), timeout=60)
            time.sleep(1.0)
            server.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            terminated.set()
            assert heard([f.alternatives[0].transcript for f in finals(list(call))], "what_time.wav")
            with pytest.raises(grpc.RpcError) as err:
                stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
