"""Pieces shared by the load commands (benchmark, soak): a local server, test
audio, and the server process's CPU, memory and open files from /proc."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf

from engine.manifest import read_audio, read_manifest

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
RATE = 16000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(extra_args: list[str]) -> tuple[subprocess.Popen, str]:
    """`python -m service` on free loopback ports; returns the process and its target once it serves."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
                               "--metrics-host", "127.0.0.1", "--metrics-port", str(free_port()), "--http-port", "0",
                               # one load generator plays many clients from one address
                               "--max-streams-per-client", "100000", "--max-recognize-per-client", "100000",
                               "--admin-without-auth", "true", *extra_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return server, target


def read_clips(manifest: Path, limit: int) -> list[np.ndarray]:
    """The first `limit` clips of a JSONL manifest (one {"audio": path} a line, a relative path from the
    manifest's folder, as the recipe writes them), 16 kHz mono int16."""
    clips = []
    for row in read_manifest(manifest)[:limit]:
        clips.append((np.clip(read_audio(row["audio"], RATE), -1, 1) * 32767).astype(np.int16))
    if not clips:
        raise ValueError(f"{manifest}: no clips")
    return clips


def test_audio(seconds: float, clips: list[np.ndarray] | None = None, first: int = 0) -> np.ndarray:
    """Clips (default: the sample clips) looped from clip `first` with 0.6 s pauses, 16 kHz int16."""
    clips = clips or [sf.read(SAMPLES / name, dtype="int16")[0] for name in ("what_time.wav", "phone.flac")]
    pause = np.zeros(int(0.6 * RATE), np.int16)
    parts, total, i = [], 0, first
    while total < seconds * RATE:
        parts += [clips[i % len(clips)], pause]
        total += len(clips[i % len(clips)]) + len(pause)
        i += 1
    return np.concatenate(parts)[: int(seconds * RATE)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
