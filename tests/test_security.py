"""TLS, mutual TLS and bearer tokens, over real channels."""

import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from conftest import SAMPLES
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prerequisites import requires
from test_hostile import FaultySession
from test_metrics import scrape, value
from test_recognize import heard

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc

AUDIO = (SAMPLES / "what_time.wav").read_bytes()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d)
    return d


def recognize(channel, metadata=None):
    stub = asr_pb2_grpc.SpeechStub(channel)
    response = stub.Recognize(asr_pb2.RecognizeRequest(audio_content=AUDIO), timeout=30, metadata=metadata)
    return response.results[0].alternatives[0].transcript


def stream(channel, metadata=None):
    def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=16000)))
        yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\x00\x00" * 1600)
    return list(asr_pb2_grpc.SpeechStub(channel).StreamingRecognize(requests(), timeout=30, metadata=metadata))


def test_bearer_tokens_guard_unary_and_streaming(make_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\nfirst-secret\nsecond-secret\n")
    srv = make_server(auth_tokens_file=tokens)
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", "first-secret")],
                         [("authorization", "Bearer wrong"), ("authorization", "Bearer second-secret")]):
            for call in (recognize, stream):
                with pytest.raises(grpc.RpcError) as err:
                    call(channel, metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert heard(recognize(channel, [("authorization", "Bearer second-secret")]), "what_time.wav")
        assert stream(channel, [("authorization", "Bearer first-secret")]) is not None
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        admin = asr_pb2_grpc.AdminStub(channel)  # the operators' RPCs are behind the same tokens
        with pytest.raises(grpc.RpcError) as err:
            admin.ReloadModel(asr_pb2.ReloadModelRequest(), timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reloaded = admin.ReloadModel(asr_pb2.ReloadModelRequest(), timeout=120,
                                     metadata=[("authorization", "Bearer first-secret")])
        assert reloaded.result == "reloaded"
    samples = scrape(srv.running.metrics_port)
    assert value(samples, "asr_requests_total", method="Recognize", code="UNAUTHENTICATED") == 4
    assert value(samples, "asr_requests_total", method="ReloadModel", code="UNAUTHENTICATED") == 1


def test_made_up_methods_cannot_grow_the_metrics(make_server, tmp_path):
    """Calls to methods the server does not have, with long made-up names and no token, are
    refused and counted under one series: /metrics does not grow with what callers send."""
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    srv = make_server(auth_tokens_file=tokens)
    size = len(urllib.request.urlopen(f"http://127.0.0.1:{srv.running.metrics_port}/metrics", timeout=5).read())
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        for i in range(200):
            call = channel.unary_unary(f"/evil.Service{i}/{'x' * 1000}{i}")
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=5)
            assert err.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED)
    text = urllib.request.urlopen(f"http://127.0.0.1:{srv.running.metrics_port}/metrics", timeout=5).read()
    assert value(scrape(srv.running.metrics_port), "asr_requests_total", method="unknown",
                 code="UNAUTHENTICATED") == 200
    assert len(text) - size < 2000 and b"xxxx" not in text  # one new series, not 200


@requires("openssl")
def test_tls(make_server, pki):
    srv = make_server(tls_cert=pki / "server.pem", tls_key=pki / "server.key")
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{srv.running.port}", creds) as channel:
        assert heard(recognize(channel), "what_time.wav")
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            recognize(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # The HTTP interface serves the same certificate.
    trusted = ssl.create_default_context(cafile=pki / "ca.pem")
    assert urllib.request.urlopen(f"https://127.0.0.1:{srv.running.http_port}/healthz", context=trusted).status == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext is refused
        urllib.request.urlopen(f"http://127.0.0.1:{srv.running.http_port}/healthz", timeout=5)


@requires("openssl")
def test_metrics_follow_the_apis_protection(make_server, pki, tmp_path):
    """With TLS or tokens on the API, /metrics listens on loopback unless told otherwise, and can be
    served over TLS with the same certificate."""
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    assert make_server(metrics_host=None).running._metrics_http.server_address[0] == "0.0.0.0"
    running = make_server(metrics_host=None, auth_tokens_file=tokens).running
    assert running._metrics_http.server_address[0] == "127.0.0.1"
    srv = make_server(metrics_host=None, tls_cert=pki / "server.pem", tls_key=pki / "server.key", metrics_tls=True)
    assert srv.running._metrics_http.server_address[0] == "127.0.0.1"
    trusted = ssl.create_default_context(cafile=pki / "ca.pem")
    body = urllib.request.urlopen(f"https://127.0.0.1:{srv.running.metrics_port}/metrics", context=trusted).read()
    assert b"asr_requests_total" in body
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{srv.running.metrics_port}/metrics", timeout=5)


@requires("openssl")
def test_mutual_tls_requires_a_client_certificate(make_server, pki):
    srv = make_server(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem")
    ca = (pki / "ca.pem").read_bytes()
    anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(f"127.0.0.1:{srv.running.port}", anonymous) as channel:
        with pytest.raises(grpc.RpcError) as err:
            recognize(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    known = grpc.ssl_channel_credentials(root_certificates=ca, private_key=(pki / "client.key").read_bytes(),
                                         certificate_chain=(pki / "client.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{srv.running.port}", known) as channel:
        assert heard(recognize(channel), "what_time.wav")
    trusted = ssl.create_default_context(cafile=pki / "ca.pem")
    url = f"https://127.0.0.1:{srv.running.http_port}/healthz"
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no client certificate
        urllib.request.urlopen(url, context=trusted, timeout=5)
    trusted.load_cert_chain(pki / "client.pem", pki / "client.key")
    assert urllib.request.urlopen(url, context=trusted, timeout=5).status == 200


def test_the_admin_service_is_closed_without_authentication(make_server):
    srv = make_server(admin_without_auth=False)  # a server with neither tokens nor mutual TLS
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            asr_pb2_grpc.AdminStub(channel).ReloadModel(asr_pb2.ReloadModelRequest(), timeout=60)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "--auth-tokens-file" in err.value.details()
        assert heard(recognize(channel), "what_time.wav")  # the API is served all the same
    assert value(scrape(srv.running.metrics_port), "asr_model_reloads_total", model=srv.running.speech.spec.name,
                 result="reloaded") == 0


def test_per_client_limits_hold_one_client_and_not_the_others(make_server, tmp_path):
    """Told apart by token: client A's third stream and second whole-file call are refused while
    client B's go through; counted in asr_client_refused_total."""
    tokens = tmp_path / "tokens"
    tokens.write_text("client-a\nclient-b\n")
    srv = make_server(auth_tokens_file=tokens, max_streams_per_client=2, max_recognize_per_client=1)
    a, b = [("authorization", "Bearer client-a")], [("authorization", "Bearer client-b")]
    admission = srv.running.speech.admission
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        held = threading.Event()

        def open_stream():
            yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
                config=asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=16000)))
            held.wait(30)
        calls = [stub.StreamingRecognize(open_stream(), timeout=60, metadata=a) for _ in range(2)]
        threads = [threading.Thread(target=list, args=(call,)) for call in calls]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while admission.streams < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as err:
            stream(channel, a)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2 per client" in err.value.details()
        assert stream(channel, b) is not None
        held.set()
        for t in threads:
            t.join(30)

        session = srv.running.speech.models.default.recognizer.session
        session.session = FaultySession(session.session, delay=0.3)  # a whole-file call stays open a while
        first = stub.Recognize.future(asr_pb2.RecognizeRequest(audio_content=AUDIO), timeout=60, metadata=a)
        while admission.unary < 1 and time.monotonic() < deadline + 20:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as err:
            recognize(channel, a)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "per client" in err.value.details()
        assert heard(recognize(channel, b), "what_time.wav")
        assert first.result().results
    samples = scrape(srv.running.metrics_port)
    assert value(samples, "asr_client_refused_total", reason="streams") == 1
    assert value(samples, "asr_client_refused_total", reason="whole_file") == 1
