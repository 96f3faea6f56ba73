"""Spreading load over replicas: client-side round robin over every address of a target,
and connections that go away with age so that long-lived clients re-resolve."""

import subprocess
import sys
import time

import grpc
import pytest
from conftest import ROOT, SAMPLES
from test_metrics import scrape, value
from test_recognize import heard
from test_streaming import pcm

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc


def recognized(srv) -> float:
    return value(scrape(srv.running.metrics_port), "asr_requests_total", method="Recognize", code="OK")


def test_client_round_robin_spreads_calls_over_every_address(make_server, tmp_path):
    replicas = [make_server(), make_server()]
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.running.port}" for r in replicas)
    files = [tmp_path / f"clip{i}.wav" for i in range(6)]
    for f in files:
        f.write_bytes((SAMPLES / "what_time.wav").read_bytes())
    for flags, spread in ((["--round-robin"], True), ([], False)):
        before = [recognized(r) for r in replicas]
        run = subprocess.run([sys.executable, "-m", "service.client", "--target", target, *flags, *map(str, files)],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert run.returncode == 0, run.stderr
        calls = [recognized(r) - b for r, b in zip(replicas, before)]
        assert sum(calls) == 6
        assert (min(calls) >= 2) if spread else (sorted(calls) == [0, 6]), calls  # pick_first: one address


def paced_stream(stub) -> list[str]:
    """A stream of about 6 s at real-time pace: it outlives a connection aged 1 s."""
    audio = pcm("what_time.wav", 2.0, "what_time.wav")

    def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=16000)))
        for i in range(0, len(audio), 6400):
            time.sleep(0.2)
            yield asr_pb2.StreamingRecognizeRequest(audio_content=audio[i:i + 6400])
    return [r.results[0].alternatives[0].transcript for r in stub.StreamingRecognize(requests(), timeout=60)
            if r.results and r.results[0].is_final]


def test_aged_connections_go_away_without_failing_calls(make_server):
    cut = make_server(max_connection_age_seconds=1.0, max_connection_age_grace_seconds=0.5)
    with grpc.insecure_channel(f"127.0.0.1:{cut.running.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:  # past age and grace the connection is closed
            paced_stream(asr_pb2_grpc.SpeechStub(channel))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    srv = make_server(max_connection_age_seconds=1.0, max_connection_age_grace_seconds=30.0)
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        assert heard(paced_stream(stub), "what_time.wav", "what_time.wav")  # within the grace: it ends as it would
        for _ in range(3):  # later calls go over new connections
            time.sleep(0.6)
            response = stub.Recognize(asr_pb2.RecognizeRequest(audio_content=(SAMPLES / "what_time.wav").read_bytes()),
                                      timeout=30)
            assert heard(response.results[0].alternatives[0].transcript, "what_time.wav")
