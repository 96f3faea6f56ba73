"""Assembles and runs the server: model, the transport-free service, its gRPC
adapter (with health and reflection), its HTTP adapter, /metrics."""

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from google.longrunning import operations_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from riva.client.proto import riva_asr_pb2_grpc

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.config import ServerConfig
from service.lifecycle.loading import announce, load_model
from service.lifecycle.registry import Reloader
from service.metrics import Metrics
from service.session.speech import Speech
from service.transports import google_operations, google_speech, riva_asr
from service.transports.google_operations import Operations
from service.transports.google_speech import GoogleSpeechServicer
from service.transports.grpc_api import AdminServicer, SpeechServicer
from service.transports.http_api import HttpApi
from service.transports.riva_asr import RivaServicer
from service.transports.security import BearerTokenInterceptor, http_ssl_context, read_bearer_tokens, server_credentials
from service.transports.wyoming_asr import WyomingServer

log = logging.getLogger(__name__)
SLACK = 1024 * 1024
SERVICE_NAME = asr_pb2.DESCRIPTOR.services_by_name["Speech"].full_name
ADMIN_NAME = asr_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
# Method label values: the served methods' short names; any other path a caller makes up is "unknown",
# so unauthenticated callers cannot add series to /metrics.
KNOWN_METHODS = {f"/{service.full_name}/{method.name}": method.name
                 for service in asr_pb2.DESCRIPTOR.services_by_name.values() for method in service.methods} | {
    f"/{protocol.SERVICE}/{method}": label for protocol in (google_speech, google_operations, riva_asr)
    for method, label in protocol.METHODS.items()}


@dataclass
class RunningServer:
    server: grpc.aio.Server
    speech: Speech
    reloader: Reloader
    http: HttpApi
    wyoming: WyomingServer | None
    operations: Operations  # Google's long-running operations
    health: health.aio.HealthServicer
    port: int
    http_port: int
    metrics_port: int
    wyoming_port: int | None
    _metrics_http: object

    async def stop(self, grace: float) -> None:
        """Health goes NOT_SERVING (gRPC health, /readyz) and new calls get UNAVAILABLE (counted),
        while calls in flight get `grace` seconds to finish; then the transports close."""
        self.speech.draining = True
        self.reloader.stop_candidates()  # a staged ReloadModel call answers now instead of holding the drain
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.speech.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.speech.end_files()
        await asyncio.gather(self.server.stop(max(0.0, deadline - loop.time())), self.http.stop(),
                             *([self.wyoming.stop()] if self.wyoming else []))
        await self.operations.close()
        await self.reloader.close()
        await self.speech.close()
        self._metrics_http.shutdown()


class StartupError(Exception):
    """The server cannot start as configured (a port in use): one line for the operator."""


async def start(cfg: ServerConfig) -> RunningServer:
    metrics = Metrics()
    metrics.provider_fallbacks.inc(0)  # the series exists from the start, so alerts can compare it
    models = [load_model(name, directory, cfg, metrics) for name, directory in cfg.model]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise StartupError(f"--model: two models are named alike ({', '.join(names)}); name them: --model NAME=DIR")
    for served in models:
        announce(metrics, served)
        served.batcher.start()

    tokens = read_bearer_tokens(cfg.auth_tokens_file) if cfg.auth_tokens_file else None
    def refused(method: str) -> None:
        metrics.requests.labels(KNOWN_METHODS.get(method, "unknown"), "UNAUTHENTICATED").inc()

    interceptors = [BearerTokenInterceptor(tokens, refused)] if tokens else []
    server = grpc.aio.server(interceptors=interceptors,
                             # no SO_REUSEPORT: a second server on a taken port must fail, not share it
                             options=[("grpc.so_reuseport", 0),
                                      # long-lived connections go away in time, so clients spread over replicas
                                      ("grpc.max_connection_age_ms", int(cfg.max_connection_age_seconds * 1000)),
                                      ("grpc.max_connection_age_grace_ms",
                                       int(cfg.max_connection_age_grace_seconds * 1000)),
                                      # slow and idle clients cannot hold sockets without bound
                                      ("grpc.server_handshake_timeout_ms", int(cfg.read_timeout_seconds * 1000)),
                                      ("grpc.max_allowed_incoming_connections", cfg.max_connections),
                                      # up to SLACK over the limit the servicer refuses (and counts) it
                                      ("grpc.max_receive_message_length",
                                       max(cfg.max_message_bytes, cfg.max_file_bytes) + SLACK),
                                      ("grpc.max_send_message_length", cfg.max_message_bytes)])
    pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="asr")
    speech = Speech(models, pool, metrics, cfg)
    metrics.model_busy.set_function(speech.models.busy_ratio)
    metrics.stream_lag.set_function(speech.admission.server_lag)
    reloader = Reloader(speech, cfg, metrics)
    asr_pb2_grpc.add_SpeechServicer_to_server(SpeechServicer(speech, by_token=tokens is not None), server)
    google = GoogleSpeechServicer(speech, by_token=tokens is not None)
    server.add_generic_rpc_handlers((google_speech.handler(google),))
    operations_pb2_grpc.add_OperationsServicer_to_server(google.operations, server)
    riva_asr_pb2_grpc.add_RivaSpeechRecognitionServicer_to_server(RivaServicer(speech, by_token=tokens is not None),
                                                                  server)
    admin_open = tokens is not None or cfg.tls_client_ca is not None or cfg.admin_without_auth
    asr_pb2_grpc.add_AdminServicer_to_server(AdminServicer(speech, reloader, admin_open), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, ADMIN_NAME, riva_asr.SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server)
    address = f"{cfg.host}:{cfg.port}"
    try:
        if cfg.tls_cert:
            port = server.add_secure_port(address, server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(f"--port {cfg.port}: cannot listen on {address}: the port is in use (or the address "
                           "is not this machine's); choose another with --port")
    try:
        tls = dict(certfile=str(cfg.tls_cert), keyfile=str(cfg.tls_key), client_auth_required=bool(cfg.tls_client_ca),
                   client_cafile=str(cfg.tls_client_ca) if cfg.tls_client_ca else None) if cfg.metrics_tls else {}
        metrics_http, _ = start_http_server(cfg.metrics_port, cfg.metrics_address, registry=metrics.registry, **tls)
    except OSError as e:
        raise StartupError(f"--metrics-port {cfg.metrics_port}: cannot listen on {cfg.metrics_address}:"
                           f"{cfg.metrics_port} ({e.strerror}); choose another with --metrics-port") from e
    http = HttpApi(speech, cfg, tokens)
    try:
        http_port = await http.start(http_ssl_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
                                     if cfg.tls_cert else None)
    except OSError as e:
        metrics_http.shutdown()
        raise StartupError(f"--http-port {cfg.http_port}: cannot listen on {cfg.host}:{cfg.http_port} "
                           f"({e.strerror}); choose another with --http-port") from e
    wyoming, wyoming_port = None, None
    if cfg.wyoming_port >= 0:
        wyoming = WyomingServer(speech)
        try:
            wyoming_port = await wyoming.start(cfg.host, cfg.wyoming_port)
        except OSError as e:
            await http.stop()
            metrics_http.shutdown()
            raise StartupError(f"--wyoming-port {cfg.wyoming_port}: cannot listen on {cfg.host}:{cfg.wyoming_port} "
                               f"({e.strerror}); choose another with --wyoming-port") from e
    await server.start()
    for name in ("", SERVICE_NAME, google_speech.SERVICE, riva_asr.SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving gRPC on %s:%d and HTTP on port %d%s (%s%s), metrics on %s://%s:%d/metrics; Admin %s; pid %d "
             "(SIGHUP reloads the models)", cfg.host, port, http_port,
             f", Wyoming on port {wyoming_port}" if wyoming else "",
             "mutual TLS" if cfg.tls_client_ca else "TLS" if cfg.tls_cert else "plaintext",
             ", bearer tokens" if tokens else "", "https" if cfg.metrics_tls else "http", cfg.metrics_address,
             metrics_http.server_port, "open" if admin_open else "closed (no tokens or mutual TLS)", os.getpid())
    return RunningServer(server, speech, reloader, http, wyoming, google.operations, health_servicer, port, http_port,
                         metrics_http.server_port, wyoming_port, metrics_http)


async def serve(cfg: ServerConfig) -> None:
    running = await start(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()

    def reload_all() -> None:
        log.info("SIGHUP: reloading every model from its directory")
        task = loop.create_task(running.reloader.reload_all())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_all)
    await stop.wait()
    log.info("shutting down (grace %.0f s)", cfg.grace_seconds)
    await running.stop(cfg.grace_seconds)
