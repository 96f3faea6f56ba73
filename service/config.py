"""Server options: flags, each also settable as CTC_ASR_<NAME>, validated once."""

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "models" / "pretrained" / "default"


@dataclass(frozen=True)
class ServerConfig:
    model: Path = BUNDLED_MODEL
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8000
    provider: str = "auto"
    intra_op_threads: int = 1
    workers: int = 2
    max_unary_audio_seconds: float = 60.0
    max_stream_audio_seconds: float = 300.0
    max_message_bytes: int = 10 * 1024 * 1024
    grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.provider not in ("auto", "cuda", "cpu"):
            raise ValueError(f"--provider must be auto, cuda or cpu, not {self.provider!r}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be a port number")
        for name in ("intra_op_threads", "workers", "max_unary_audio_seconds", "max_stream_audio_seconds",
                     "max_message_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")


HELP = {
    "model": "model directory written by `python -m export` (default: the bundled model)",
    "host": "gRPC listen address",
    "port": "gRPC port (0: any free port)",
    "metrics_host": "address of the /metrics HTTP server (e.g. 127.0.0.1 to keep it local)",
    "metrics_port": "port of the /metrics HTTP server",
    "provider": "ONNX Runtime execution provider: auto (CUDA when it loads, else CPU), cuda or cpu",
    "intra_op_threads": "ONNX Runtime threads per model call",
    "workers": "threads running model steps and decoding",
    "max_unary_audio_seconds": "longest audio Recognize accepts (OUT_OF_RANGE past it)",
    "max_stream_audio_seconds": "longest audio one StreamingRecognize call accepts (OUT_OF_RANGE past it)",
    "max_message_bytes": "largest gRPC message accepted (RESOURCE_EXHAUSTED past it)",
    "grace_seconds": "on SIGTERM, how long in-flight calls may take to finish",
}


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    p = argparse.ArgumentParser(prog="python -m service", description="ctc-asr gRPC speech recognition server")
    for f in fields(ServerConfig):
        env = f"CTC_ASR_{f.name.upper()}"
        p.add_argument(f"--{f.name.replace('_', '-')}", type=f.type if f.type is not Path else Path,
                       default=os.environ.get(env, f.default), help=f"{HELP[f.name]} [env {env}; default %(default)s]")
    args = vars(p.parse_args(argv))
    try:
        return ServerConfig(**{f.name: (f.type if f.type is not Path else Path)(args[f.name]) for f in fields(ServerConfig)})
    except ValueError as e:
        p.error(str(e))
