"""Monitoring for real: Debian's Prometheus scrapes the service while canaries
run, and the alert rules pass promtool's checks and unit tests."""

import json
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import jiwer
import pytest
from conftest import ROOT, SAMPLES
from prerequisites import requires

from ctc_asr.v1 import asr_pb2_grpc
from engine.text import normalize
from service.tools.loadgen import free_port
from service.tools.prober import probe

DEPLOY = ROOT / "deploy"
needs_prometheus = requires("promtool")


@needs_prometheus
def test_alert_rules_check_and_unit_tests():
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def _scraped(port: int) -> bool:
    try:
        return bool(query(port, "asr_canary_requests_total"))
    except OSError:  # not listening yet
        return False


def query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]


CANARIES = [  # (clip, reference): some references are wrong on purpose, so WER is not 0
    ("what_time.wav", "what time is it in paris"),
    ("phone.flac", "my phone number is three two zero zero five nine one four five seven"),
    ("what_time.wav", "what time is it in london"),
    ("phone.flac", "my number is three two zero zero five nine one four five"),
    ("what_time.wav", "what is the time in paris please"),
    ("phone.flac", "my phone number is one two three"),
]


@needs_prometheus
def test_promql_running_wer_equals_jiwer_offline(make_server, tmp_path):
    srv = make_server()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: ctc-asr
    static_configs: [{{targets: ["127.0.0.1:{srv.running.metrics_port}"]}}]
""")
    prometheus = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _scraped(prom_port) and time.monotonic() < deadline:  # the canary series exist from the start
            time.sleep(0.5)
        references, hypotheses, scores = [], [], []
        with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
            stub = asr_pb2_grpc.SpeechStub(channel)
            for i, (clip, reference) in enumerate(CANARIES):  # unary and streaming in turn
                transcript, score = probe(stub, {"audio": SAMPLES / clip, "text": reference},
                                          streaming=i % 2 == 1, realtime=False, timeout=30)
                references.append(normalize(reference))
                hypotheses.append(normalize(transcript))
                scores.append(score)
        while time.monotonic() < deadline:  # until Prometheus has scraped the last canary
            done = query(prom_port, "sum(asr_canary_requests_total)")
            if done and float(done[0]["value"][1]) == len(CANARIES):
                break
            time.sleep(0.5)
        running = query(prom_port, "sum(rate(asr_canary_word_errors_total[5m])) / "
                                   "sum(rate(asr_canary_reference_words_total[5m]))")
        offline = jiwer.wer(references, hypotheses)  # total word errors / total reference words
        assert offline > 0
        assert float(running[0]["value"][1]) == pytest.approx(offline, rel=1e-9)
        assert sum(s.word_errors for s in scores) / sum(s.reference_words for s in scores) == pytest.approx(offline)
    finally:
        prometheus.terminate()
        prometheus.wait(30)
