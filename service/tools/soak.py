"""Soak test: streams opening and closing near the concurrency limit, and clients killed mid-stream.

    python -m service.tools.soak [--minutes 30] [--streams 60] [--kill-rounds 100] [--target HOST:PORT]

Without --target it starts `python -m service --max-concurrent-streams 64`
on loopback (extra server flags after `--`). Phase 1 keeps --streams streams
open for --minutes: each sends 1-8 s of audio at real-time pace, then
half-closes (or, one time in five, cancels), and a new one takes its place.
Every 10 s it samples the server's RSS and open files. Phase 2 starts client
processes that open streams and are SIGKILLed mid-stream, --kill-rounds times
(10 streams each), then checks that the server still transcribes and that no
stream is left open. Prints errors, RSS (start, end, slope in MB per hour) and
open files. Bounded in time; loopback only.
"""

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.tools.loadgen import RATE, SAMPLES, open_files, rss_mb, start_server, test_audio

Encoding = asr_pb2.RecognitionConfig.AudioEncoding
SAMPLE_EVERY_S = 10  # server RSS and open files
CONFIG = asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
    config=asr_pb2.RecognitionConfig(encoding=Encoding.LINEAR16, sample_rate_hertz=RATE), interim_results=True))


async def stream_once(stub, pcm: bytes, rng: random.Random, stats: dict) -> None:
    seconds = rng.uniform(1, 8)
    cancel = rng.random() < 0.2
    data = pcm[: int(seconds * RATE) * 2]

    async def requests():
        yield CONFIG
        for i in range(0, len(data), 3200):
            yield asr_pb2.StreamingRecognizeRequest(audio_content=data[i:i + 3200])
            await asyncio.sleep(0.1)

    call = stub.StreamingRecognize(requests())
    try:
        if cancel:
            await asyncio.sleep(seconds / 2)
            call.cancel()
            stats["cancelled"] += 1
            return
        async for _ in call:
            pass
        stats["completed"] += 1
    except asyncio.CancelledError:
        raise
    except grpc.aio.AioRpcError as e:
        if not (cancel and e.code() == grpc.StatusCode.CANCELLED):
            stats["errors"].append(e.code().name)


async def churn(target: str, streams: int, minutes: float, pid: int | None) -> dict:
    pcm = test_audio(10).astype("<i2").tobytes()
    stats = {"completed": 0, "cancelled": 0, "errors": [], "samples": []}
    deadline = time.monotonic() + 60 * minutes

    async def worker(seed: int):
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            await stream_once(stub, pcm, rng, stats)

    async def sampler():
        started = time.monotonic()
        while time.monotonic() < deadline:
            if pid:
                stats["samples"].append((time.monotonic() - started, rss_mb(pid), open_files(pid)))
            await asyncio.sleep(SAMPLE_EVERY_S)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        await asyncio.gather(sampler(), *(worker(i) for i in range(streams)))
    return stats


def doomed_client(target: str, streams: int) -> None:
    """Runs in a child process that the parent kills mid-stream."""
    pcm = test_audio(10).astype("<i2").tobytes()

    async def run():
        async with grpc.aio.insecure_channel(target) as channel:
            stub = asr_pb2_grpc.SpeechStub(channel)
            await asyncio.gather(*(stream_once(stub, pcm, random.Random(i), {"completed": 0, "cancelled": 0,
                                                                             "errors": []})
                                   for i in range(streams)))
    asyncio.run(run())


def kill_clients(target: str, rounds: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    for i in range(rounds):
        child = ctx.Process(target=doomed_client, args=(target, 10))
        child.start()
        time.sleep(random.Random(i).uniform(0.5, 2.0))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        print(f"\rkilled clients: {i + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m service.tools.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="a running server (default: start one on loopback)")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--streams", type=int, default=60, help="streams kept open at once")
    p.add_argument("--kill-rounds", type=int, default=100, help="client processes killed mid-stream")
    p.add_argument("server_args", nargs="*", help="after --: flags for the server it starts")
    a = p.parse_args()
    server = None
    if not a.target:
        server, a.target = start_server(["--max-concurrent-streams", "64", *a.server_args])
    pid = server.pid if server else None
    try:
        stats = asyncio.run(churn(a.target, a.streams, a.minutes, pid))
        errors = len(stats["errors"])
        print(f"churn: {a.minutes:g} min, {a.streams} streams at once: {stats['completed']} completed, "
              f"{stats['cancelled']} cancelled, {errors} errors {sorted(set(stats['errors']))}")
        if len(stats["samples"]) >= 2:
            t, rss, fds = (np.array(x) for x in zip(*stats["samples"]))
            slope = np.polyfit(t / 3600, rss, 1)[0]
            # RSS grows once while the server warms up: report the slope after the first 5 minutes
            # too, so warm-up is not mistaken for a leak.
            warm = t >= min(300.0, t[-1] / 2)
            warm_slope = np.polyfit(t[warm] / 3600, rss[warm], 1)[0] if warm.sum() >= 2 else float("nan")
            marks = ", ".join(f"{int(x // 60)} min {r:.0f}" for x, r in zip(t, rss) if int(x) % 300 < SAMPLE_EVERY_S)
            print(f"server RSS: {rss[0]:.0f} MB at the start, {rss[-1]:.0f} MB at the end, "
                  f"slope {slope:+.1f} MB per hour ({warm_slope:+.1f} after the first {t[warm][0] / 60:.0f} min); "
                  f"open files {fds.min()}-{fds.max()}\nRSS (MB) every 5 min: {marks}")
        kill_clients(a.target, a.kill_rounds)
        with grpc.insecure_channel(a.target) as channel:
            stub = asr_pb2_grpc.SpeechStub(channel)
            text = stub.Recognize(asr_pb2.RecognizeRequest(audio_content=(SAMPLES / "what_time.wav").read_bytes()),
                                  timeout=30).results[0].alternatives[0].transcript
        time.sleep(2)
        active = _active_streams(pid, a.target) if server else "?"
        print(f"after {a.kill_rounds} killed clients ({10 * a.kill_rounds} streams): server transcribes "
              f"({text!r}); active streams {active}" + (f"; open files {open_files(pid)}" if pid else ""))
        return 1 if errors else 0
    finally:
        if server:
            server.terminate()
            server.wait(30)


def _active_streams(pid: int, target: str) -> str:
    """asr_active_streams from the server's /metrics (its port is on the command line)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    port = cmdline[cmdline.index("--metrics-port") + 1]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next(line.split()[1] for line in text.splitlines() if line.startswith("asr_active_streams "))


if __name__ == "__main__":
    sys.exit(main())
