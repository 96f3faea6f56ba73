"""Connections cannot be held without bound: a cap per listener, slow or idle clients closed, request
bodies timed, and a drain (SIGTERM) that never outlasts --grace-seconds, whatever clients do."""

import signal
import socket
import subprocess
import sys
import time

import grpc
from conftest import ROOT
from test_metrics import scrape, value

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.tools.loadgen import free_port


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within `seconds`, and what it sent before."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
        return True, received
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        return True, received


def test_slow_and_idle_http_clients_are_closed_and_connections_capped(make_server):
    srv = make_server(read_timeout_seconds=1.0, max_connections=4, http_body_timeout_seconds=1.0)
    port = srv.running.http_port
    slow_headers = socket.create_connection(("127.0.0.1", port))
    slow_headers.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    slow_body = socket.create_connection(("127.0.0.1", port))
    slow_body.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                      b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    time.sleep(0.3)
    over = socket.create_connection(("127.0.0.1", port))  # the fifth: over the cap
    refused, answer = closed_within(over, 2)
    assert refused and answer.startswith(b"HTTP/1.1 503")
    started = time.monotonic()
    closed, answer = closed_within(slow_body, 5)
    assert closed and answer.startswith(b"HTTP/1.1 408") and b"--http-body-timeout-seconds" in answer
    for sock in [slow_headers, *idle]:
        assert closed_within(sock, 5)[0]
    assert time.monotonic() - started < 5
    assert value(scrape(srv.running.metrics_port), "asr_requests_total", method="HTTPTranscriptions",
                 code="DEADLINE_EXCEEDED") == 1


def test_a_grpc_connection_that_never_handshakes_is_closed(make_server):
    srv = make_server(read_timeout_seconds=1.0)
    silent = socket.create_connection(("127.0.0.1", srv.running.port))
    started = time.monotonic()
    assert closed_within(silent, 10)[0] and time.monotonic() - started < 5


def test_a_drain_never_outlasts_the_grace_whatever_uploads_do():
    """An upload whose body never completes cannot hold SIGTERM past --grace-seconds."""
    port, http_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
                               "--http-port", str(http_port), "--metrics-port", "0", "--grace-seconds", "2"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                upload = socket.create_connection(("127.0.0.1", http_port))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.2)
        upload.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                       b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
        time.sleep(0.5)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        assert time.monotonic() - started < 2 + 3, server.stdout.read()
    finally:
        server.kill()


def test_grpc_connections_are_capped(make_server):
    srv = make_server(max_connections=3)
    channels = [grpc.insecure_channel(f"127.0.0.1:{srv.running.port}",
                                      options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)]
    try:
        codes = []
        for channel in channels:  # each its own connection
            try:
                asr_pb2_grpc.SpeechStub(channel).GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.UNAVAILABLE]
    finally:
        for channel in channels:
            channel.close()
