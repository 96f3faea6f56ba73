"""Transport security and bearer-token authentication, for every transport.

Tokens are compared in constant time; a gRPC call without a valid
`authorization: Bearer <token>` metadata entry ends with UNAUTHENTICATED
before it reaches the servicer (HTTP: 401, see service.transports.http_api). Health
checks and reflection stay open so that load balancers and tooling need no
token.
"""

import hmac
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc

OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
BEARER = "Bearer "


def bearer(headers: list[str]) -> str:
    """The token of the call's `authorization: Bearer <token>` entries: "" unless there is exactly one
    (with two, which one counts would be the transport's choice)."""
    return headers[0].removeprefix(BEARER) if len(headers) == 1 and headers[0].startswith(BEARER) else ""


def _deny(code: grpc.StatusCode, message: str):
    async def abort(request, context):
        await context.abort(code, message)
    return abort


class Tokens:
    """The accepted bearer tokens."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def valid(self, token: str) -> bool:
        """Whether `token` is one of them ("" never is: empty lines are not tokens)."""
        given = token.encode()
        # Compare with every token (no early exit) so timing says nothing about which matched.
        return sum(hmac.compare_digest(given, t) for t in self._tokens) > 0


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Tokens, on_refused: Callable[[str], None] = lambda method: None) -> None:
        """`on_refused(method)`: a call refused (the method's full path as the caller sent it,
        e.g. /ctc_asr.v1.Speech/Recognize: anything, so only known ones may become labels)."""
        self._tokens = tokens
        self._on_refused = on_refused

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        headers = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        if details.method.startswith(OPEN_METHODS) or self._tokens.valid(bearer(headers)):
            return await continuation(details)
        self._on_refused(details.method)
        handler = await continuation(details)
        deny = _deny(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        if handler is None:
            return None
        # The refusal must have the handler kind of the method it replaces (a streaming
        # method refused with a unary handler breaks the call instead of failing it).
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_deny_stream(deny))
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny_stream(deny))
        return grpc.unary_unary_rpc_method_handler(deny)


def _deny_stream(deny):
    async def handler(request, context):
        await deny(request, context)
        yield  # never reached: makes this an async generator, as streaming handlers are
    return handler


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS; with client_ca, mutual TLS (clients must present a certificate it signed)."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None)


def http_ssl_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The same TLS (and mutual TLS) for HTTP as `server_credentials` gives gRPC."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE
    return context


def read_bearer_tokens(path: Path) -> Tokens:
    """One token per line; blank lines and # comments are skipped."""
    tokens = [line.strip() for line in path.read_text().splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return Tokens(tokens)
