"""One client cannot deny service to the others: beside each single-client attack of `python -m
service.tools.abuse`, 8 well-behaved real-time streams (another token) are all admitted and keep p95
partial latency within 300 ms, on a server with the default admission rules, in its own process."""

import asyncio

import pytest
from test_metrics import scrape, value

from service.tools.abuse import abuses, measure, start_with_default_rules
from service.tools.loadgen import free_port

ATTACKS = ["a stream of 2-byte messages, as fast as it goes", "a stream of 100 KB (3.2 s) messages, as fast as it goes",
           "50 stalled streams (config and 100 ms, then nothing)"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    metrics_port = free_port()
    process, target = start_with_default_rules(["--metrics-port", str(metrics_port)], tmp_path_factory.mktemp("abuse"))
    yield target, process, metrics_port
    process.terminate()
    process.wait(30)


@pytest.mark.parametrize("attack", ATTACKS)
def test_one_clients_attack_leaves_the_others_in_real_time(server, attack):
    target, process, metrics_port = server
    m = asyncio.run(measure(target, process.pid, 6.0, abuses()[attack]))
    assert m["refused"] == 0 and m["errors"] == 0, m
    assert m["p95_ms"] <= 300, m
    samples = scrape(metrics_port)
    if attack.startswith("a stream of 2-byte"):  # ended for its own pace, and again each time it came back
        assert value(samples, "asr_client_refused_total", reason="behind_real_time") >= 1
    if attack.startswith("50 stalled"):  # the per-client limit holds them to 16 of the 64 slots
        assert value(samples, "asr_client_refused_total", reason="streams") == 34
        # (its client sees most refusals as INTERNAL "Internal error from Core": grpc/grpc#36066)
        assert m["abuser"]["RESOURCE_EXHAUSTED"] + m["abuser"]["INTERNAL"] == 34
    assert value(samples, "asr_shed_total", method="StreamingRecognize") == 0
