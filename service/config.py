"""Server options: flags, each also settable as CTC_ASR_<NAME>, validated once."""

import argparse
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from engine.decoder.ctc import ENGINES
from engine.endpointing import EndpointConfig

# Package data of the `models` package (pyproject.toml), so that an installed server finds it too.
BUNDLED_MODEL = Path(str(resources.files("models"))) / "pretrained" / "default"


DEFAULT_ENDPOINT = EndpointConfig()  # the endpoint flags' defaults are its own
ModelArg = tuple[str, Path]  # (name, directory); "" names a model by its own model.json name


def model_args(value: "str | Path | tuple") -> tuple[ModelArg, ...]:
    """`--model [NAME=]DIR`, repeated (or CTC_ASR_MODEL, comma-separated): the first is the default."""
    if isinstance(value, (str, Path)):
        value = [value] if isinstance(value, Path) else value.split(",")
    out = []
    for item in value:
        if isinstance(item, tuple):
            out.append((item[0], Path(item[1])))
            continue
        name, sep, directory = str(item).partition("=")
        out.append((name, Path(directory)) if sep and name and "/" not in name else ("", Path(item)))
    if not out or any(str(d) in ("", ".") for _, d in out):
        raise ValueError("--model needs a model directory ([NAME=]DIR)")
    return tuple(out)


def flag(default, help: str, positive: bool = False):
    """A server option: its default, its --help text beside it, and whether it must be above 0."""
    return field(default=default, metadata={"help": help, "positive": positive})


@dataclass(frozen=True)
class ServerConfig:
    model: tuple[ModelArg, ...] = flag((("", BUNDLED_MODEL),), help=(
        "[NAME=]DIR: a model directory written by `python -m export`; repeat to serve several, the first the default "
        "(NAME: what requests ask for; default: the model's own name; default: the bundled model)"))
    host: str = flag("0.0.0.0", help="gRPC listen address")
    port: int = flag(50051, help="gRPC port (0: any free port)")
    metrics_host: str | None = flag(None, help=(
        "address of the /metrics HTTP server (default: 127.0.0.1 when the API has --tls-cert or --auth-tokens-file, "
        "else 0.0.0.0; 0.0.0.0 to let Prometheus scrape another host's)"))
    metrics_port: int = flag(8000, help="port of the /metrics HTTP server")
    http_port: int = flag(8080, help=(
        "HTTP port (on --host): OpenAI-compatible /v1/audio/transcriptions, WebSocket /v1/stream, the browser page at"
        " /, /healthz and /readyz (0: any free port)"))
    wyoming_port: int = flag(-1, help=(
        "Wyoming (Home Assistant) TCP port (on --host): describe and transcribe (-1: off, the default; 0: any free "
        "port). Wyoming has no authentication: with --auth-tokens-file the server will not open it unless "
        "--wyoming-without-auth"))
    wyoming_without_auth: bool = flag(False, help=(
        "open --wyoming-port on a server with --auth-tokens-file (Wyoming clients cannot send tokens: a trusted "
        "network only)"))
    provider: str = flag("auto", help=(
        "ONNX Runtime execution provider: auto (CUDA when it loads, else CPU), cuda or cpu"))
    decoder: str = flag("auto", help=(
        "beam search engine: auto (native where built, else python), native (compiled; fail if not built) or python "
        "(the reference)"))
    intra_op_threads: int = flag(2, positive=True, help="ONNX Runtime threads per model call")
    workers: int = flag(2, positive=True, help=(
        "threads for unary requests and stream bookkeeping; the native beam search decodes a model batch's streams "
        "this many at a time"))
    max_pending_second_passes: int = flag(4, positive=True, help=(
        "finals that may wait for a model's second pass (which runs one at a time on a thread of its own); past "
        "it, and while the server sheds load, a final stays the first pass's, flagged second_pass_fallback"))
    max_unary_audio_seconds: float = flag(60.0, positive=True, help=(
        "longest audio Recognize accepts (OUT_OF_RANGE past it; longer files: HTTP transcriptions, "
        "LongRunningRecognize)"))
    max_file_bytes: int = flag(25 * 1024 * 1024, positive=True, help=(
        "largest audio file accepted whole: an HTTP transcriptions upload, a Recognize or LongRunningRecognize request "
        "(OpenAI's limit, about 25 minutes of MP3 at 128 kbit/s)"))
    max_file_audio_seconds: float = flag(7200.0, positive=True, help=(
        "longest audio HTTP transcriptions and LongRunningRecognize accept, once decoded (OUT_OF_RANGE past it)"))
    file_parallel_segments: int = flag(4, positive=True, help=(
        "segments of one long file decoded side by side (they fill what live streams leave of the model)"))
    max_stream_audio_seconds: float = flag(300.0, positive=True, help=(
        "longest audio one StreamingRecognize call accepts (OUT_OF_RANGE past it)"))
    max_message_bytes: int = flag(10 * 1024 * 1024, positive=True, help=(
        "largest gRPC message sent, and largest Wyoming event accepted; gRPC takes requests up to the larger of this "
        "and --max-file-bytes (RESOURCE_EXHAUSTED past it), a stream's audio messages then up to --max-chunk-bytes"))
    grace_seconds: float = flag(10.0, help="on SIGTERM, how long in-flight calls may take to finish")
    max_connection_age_seconds: float = flag(300.0, positive=True, help=(
        "gRPC connections are asked to go away (GOAWAY) after this long, so that clients re-resolve and spread over "
        "replicas"))
    max_connection_age_grace_seconds: float = flag(300.0, positive=True, help=(
        "calls still open on an aged connection get this long to finish (streams run up to "
        "--max-stream-audio-seconds)"))
    max_concurrent_streams: int = flag(64, positive=True, help=(
        "StreamingRecognize calls served at once (RESOURCE_EXHAUSTED past it)"))
    max_concurrent_recognize: int = flag(4, positive=True, help=(
        "whole-file calls (Recognize, HTTP transcriptions) served at once (RESOURCE_EXHAUSTED past it)"))
    max_streams_per_client: int = flag(16, positive=True, help=(
        "streams one client (bearer token, else address) may hold at once (RESOURCE_EXHAUSTED past it)"))
    max_recognize_per_client: int = flag(2, positive=True, help=(
        "whole-file calls one client (bearer token, else address) may have at once (RESOURCE_EXHAUSTED past it)"))
    max_stream_lag_seconds: float = flag(3.0, positive=True, help=(
        "a live stream this far behind real time is ended with RESOURCE_EXHAUSTED (the server lost capacity, or the "
        "stream's messages are too small to read in real time)"))
    shed_stream_lag_seconds: float = flag(1.0, positive=True, help=(
        "load shedding: while a live stream is this far behind real time because of the server (not its own pace), "
        "new streams and whole-file calls get RESOURCE_EXHAUSTED (until none is half of it behind)"))
    max_model_busy_ratio: float = flag(0.85, help=(
        "load shedding: while the model (with its batch decoding) runs more than this share of the last 2 s for live "
        "streams, new streams and whole-file calls get RESOURCE_EXHAUSTED (1: never)"))
    max_batch: int = flag(32, positive=True, help="most stream chunks run in one model call")
    max_canary_sets: int = flag(10, positive=True, help=(
        "distinct canary set labels in metrics, 'default' and 'other' included; further sets are counted as 'other'"))
    canary_sets: str | None = flag(None, help=(
        "comma-separated canary set names that get metric labels of their own (others count as 'other'); empty: the "
        "first sets callers send, up to --max-canary-sets"))
    self_check_max_wer: float = flag(0.5, help=(
        "a reloaded model directory is served only if its canaries/ decode within this WER (on top of loading and a "
        "warm-up)"))
    promotion_min_canaries: int = flag(20, positive=True, help=(
        "a staged candidate is decided once every canary set seen has sent this many canaries"))
    promotion_max_wer_increase: float = flag(0.01, help=(
        "a staged candidate is promoted when, on every set, its WER on the same canaries is at most this much above "
        "the serving model's (0.01: one point)"))
    promotion_timeout_seconds: float = flag(3600.0, positive=True, help=(
        "a staged candidate without enough canaries by then is dropped (result expired)"))
    max_batch_wait_ms: float = flag(0.0, help=(
        "how long a ready chunk may wait for others to batch with (0: take what is queued)"))
    max_chunk_bytes: int = flag(1024 * 1024, positive=True, help=(
        "largest audio_content in one streaming message (OUT_OF_RANGE past it)"))
    max_messages_per_second: float = flag(200.0, positive=True, help=(
        "a stream's messages are read at most this often (faster senders are slowed by flow control, not refused)"))
    stream_idle_timeout_seconds: float = flag(30.0, positive=True, help=(
        "a stream that sends nothing for this long ends with OUT_OF_RANGE"))
    max_connections: int = flag(1000, positive=True, help=(
        "open connections at once on each of the gRPC and HTTP ports (past it a new one is refused; HTTP answers 503 "
        "first)"))
    read_timeout_seconds: float = flag(15.0, positive=True, help=(
        "a connection that has not finished its handshake (gRPC), or is idle or still sending a request's headers "
        "(HTTP), for this long is closed"))
    http_body_timeout_seconds: float = flag(60.0, positive=True, help=(
        "a transcription request's body must arrive within this long (408 past it)"))
    tls_cert: Path | None = flag(None, help="PEM certificate chain: serve TLS (with --tls-key)")
    tls_key: Path | None = flag(None, help="PEM private key of --tls-cert")
    tls_client_ca: Path | None = flag(None, help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    auth_tokens_file: Path | None = flag(None, help=(
        "file of bearer tokens, one per line: calls need `authorization: Bearer <token>`"))
    admin_without_auth: bool = flag(False, help=(
        "serve the Admin service (ReloadModel) with neither --auth-tokens-file nor --tls-client-ca (only on a trusted"
        " network; by default it is closed then)"))
    metrics_tls: bool = flag(False, help=(
        "serve /metrics over TLS with --tls-cert and --tls-key (and, with --tls-client-ca, only to clients with a "
        "certificate it signed)"))
    endpointing: bool = flag(DEFAULT_ENDPOINT.enabled, help=(
        "streams: end utterances (final results) at silences; false: finals only at --endpoint-max-utterance-seconds "
        "and at half-close"))
    endpoint_silence_after_speech_seconds: float = flag(DEFAULT_ENDPOINT.silence_after_speech_s, help=(
        "trailing silence after speech that ends an utterance"))
    endpoint_silence_no_speech_seconds: float = flag(DEFAULT_ENDPOINT.silence_no_speech_s, help=(
        "silence with nothing decoded after which the utterance is dropped"))
    endpoint_max_utterance_seconds: float = flag(DEFAULT_ENDPOINT.max_utterance_s, help=(
        "longest utterance before a final is forced (cut at the widest gap between words in its last fifth)"))
    endpoint_blank_threshold: float = flag(DEFAULT_ENDPOINT.blank_threshold, help=(
        "a frame is silence when the CTC blank probability exceeds this"))
    left_context_ms: int | None = flag(None, help=(
        "buffered (full-context) models: past audio each model call sees (default: model.json's)"))
    chunk_ms: int | None = flag(None, help=(
        "buffered models: new audio per model call, whose outputs are kept (default: model.json's)"))
    right_context_ms: int | None = flag(None, help=(
        "buffered models: future audio each call sees; results lag by it (default: model.json's)"))
    @property
    def window_ms(self) -> tuple[int | None, int | None, int | None]:
        """A buffered model's (left context, chunk, right context) overrides."""
        return self.left_context_ms, self.chunk_ms, self.right_context_ms

    @property
    def pinned_canary_sets(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in (self.canary_sets or "").split(",") if name.strip())

    @property
    def metrics_address(self) -> str:
        """Where /metrics listens: --metrics-host, else loopback once the API has TLS or tokens (so that
        /metrics is not the one open door), else every address."""
        if self.metrics_host:
            return self.metrics_host
        return "127.0.0.1" if self.tls_cert or self.auth_tokens_file else "0.0.0.0"

    @property
    def endpoint(self) -> EndpointConfig:
        return EndpointConfig(self.endpointing, self.endpoint_silence_after_speech_seconds,
                              self.endpoint_silence_no_speech_seconds, self.endpoint_max_utterance_seconds,
                              self.endpoint_blank_threshold)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", model_args(self.model))  # a bare directory is one model
        names = [name for name, _ in self.model if name]
        if len(names) != len(set(names)):
            raise ValueError(f"--model names must differ: {', '.join(names)}")
        _ = self.endpoint  # EndpointConfig checks the endpoint settings
        if self.provider not in ("auto", "cuda", "cpu"):
            raise ValueError(f"--provider must be auto, cuda or cpu, not {self.provider!r}")
        if self.decoder not in ENGINES:
            raise ValueError(f"--decoder must be {', '.join(ENGINES)}, not {self.decoder!r}")
        for name in ("port", "metrics_port", "http_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be a port number")
        if not -1 <= self.wyoming_port <= 65535:
            raise ValueError("--wyoming-port must be a port number, or -1 (off)")
        for f in fields(self):
            if f.metadata["positive"] and getattr(self, f.name) <= 0:
                raise ValueError(f"--{f.name.replace('_', '-')} must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.metrics_tls and not self.tls_cert:
            raise ValueError("--metrics-tls needs --tls-cert and --tls-key")
        if self.wyoming_port >= 0 and self.auth_tokens_file and not self.wyoming_without_auth:
            raise ValueError("--wyoming-port with --auth-tokens-file: Wyoming clients cannot send tokens, so the port "
                             "would be open to anyone; add --wyoming-without-auth on a trusted network")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"--{name.replace('_', '-')} {path}: no such file")
        for name, value in zip(("left_context_ms", "chunk_ms", "right_context_ms"), self.window_ms):
            if value is not None and value < (1 if name == "chunk_ms" else 0):
                least = "positive" if name == "chunk_ms" else "at least 0"
                raise ValueError(f"--{name.replace('_', '-')} must be {least}")
        if not 0 < self.max_model_busy_ratio <= 1:
            raise ValueError("--max-model-busy-ratio must be above 0 and at most 1")
        if len(self.pinned_canary_sets) > self.max_canary_sets - 2:
            raise ValueError(f"--canary-sets names {len(self.pinned_canary_sets)} sets; at most --max-canary-sets "
                             f"({self.max_canary_sets}) less two ('default' and 'other')")
        if any(len(name) > 64 for name in self.pinned_canary_sets):
            raise ValueError("--canary-sets: a set name is at most 64 characters")
        if self.max_canary_sets < 2:
            raise ValueError("--max-canary-sets must be at least 2 (\"default\" and \"other\" are two)")
        if self.self_check_max_wer < 0 or self.promotion_max_wer_increase < 0:
            raise ValueError("--self-check-max-wer and --promotion-max-wer-increase must not be negative")
        if self.max_batch_wait_ms < 0:
            raise ValueError("--max-batch-wait-ms must not be negative")



REPEATED = ("model",)  # flags that may be given more than once
EXPECTED = {int: "a whole number", float: "a number", bool: "true or false", str: "a value", Path: "a path"}


def _convert(kind, value):
    """A flag's or environment variable's text as its field's type; ValueError says what was expected."""
    if value is None or (value == "" and kind in (Path | None, int | None, str | None)):
        return None
    if not isinstance(value, str):
        return value  # the field's default
    base = {int | None: int, str | None: str}.get(kind, kind)
    if base is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"expected true or false, not {value!r}")
        return value.lower() in ("true", "1", "yes", "on")
    try:
        if value == "":
            raise ValueError
        return Path(value) if kind == Path | None else base(value)
    except ValueError:
        raise ValueError(f"expected {EXPECTED.get(base, 'a value')}, not {value!r}") from None


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    p = argparse.ArgumentParser(prog="python -m service", description="ctc-asr gRPC speech recognition server")
    for f in fields(ServerConfig):
        env = f"CTC_ASR_{f.name.upper()}"
        repeated = f.name in REPEATED
        p.add_argument(f"--{f.name.replace('_', '-')}", default=None if repeated else os.environ.get(env, f.default),
                       action="append" if repeated else "store", metavar="BOOL" if f.type is bool else None,
                       help=f"{f.metadata['help']} [env {env}" + ("]" if repeated else "; default %(default)s]"))
    args = vars(p.parse_args(argv))
    values = {}
    for f in fields(ServerConfig):
        try:
            if f.name in REPEATED:
                values[f.name] = model_args(args[f.name] or os.environ.get(f"CTC_ASR_{f.name.upper()}") or f.default)
                continue
            values[f.name] = _convert(f.type, args[f.name])
        except ValueError as e:
            p.error(f"--{f.name.replace('_', '-')} (or CTC_ASR_{f.name.upper()}): {e}")
    try:
        return ServerConfig(**values)
    except ValueError as e:
        p.error(str(e))
