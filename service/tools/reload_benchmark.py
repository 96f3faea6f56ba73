"""What reloading a model costs while it serves: memory across reloads, and live streams' latency.

    python -m service.tools.reload_benchmark [--reloads 20] [--streams 8] [--model DIR] [-- SERVER ARGS...]

Starts a server on loopback, then in one run: real-time streams without reloads (the
reference), then the same streams while Admin.ReloadModel reloads the model `--reloads` times
(each a full load, warm-up and self-check beside the serving model). Prints the server's RSS
before the first reload and after each one, each reload's time, and both phases' partial
latency and errors side by side. With `--streams 0` the reloads run without traffic.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

import grpc

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.config import BUNDLED_MODEL
from service.tools.benchmark import pct, run_streams
from service.tools.loadgen import rss_mb, start_server

CHUNK_S, DELAY_S = 0.32, 0.16  # the bundled model's chunk and look-ahead (what partial latency is measured on)


async def reloads(target: str, pid: int, count: int, directory: Path) -> list[tuple[float, float]]:
    """(seconds, RSS MB a moment after) per reload."""
    out = []
    async with grpc.aio.insecure_channel(target) as channel:
        admin = asr_pb2_grpc.AdminStub(channel)
        for _ in range(count):
            started = time.perf_counter()
            await admin.ReloadModel(asr_pb2.ReloadModelRequest(directory=str(directory)), timeout=300)
            seconds = time.perf_counter() - started
            await asyncio.sleep(1.0)  # the old model is freed once its streams' current calls end
            out.append((seconds, rss_mb(pid)))
            print(f"reload {len(out):2d}: {seconds:5.1f} s, server RSS {out[-1][1]:6.0f} MB", flush=True)
    return out


async def streams_until(target: str, n: int, done: asyncio.Event) -> list[dict]:
    phases = []
    while not done.is_set():
        phases.append(await run_streams(target, n, 10.0, CHUNK_S, DELAY_S, None, 0))
    return phases


def summary(label: str, runs: list[dict]) -> str:
    import numpy as np
    partial = np.concatenate([r["partial"] for r in runs]) if runs else np.array([])
    errors = sum(r["errors"] + r["refused"] for r in runs)
    return (f"| {label} | {len(runs)} | {pct(partial, 50)} | {pct(partial, 95)} | {pct(partial, 99)} | "
            f"{errors} |")


async def run(a, server_pid: int, target: str) -> None:
    await run_streams(target, max(a.streams, 1), 5.0, CHUNK_S, DELAY_S, None, 0)  # warm the server up
    before = rss_mb(server_pid)
    print(f"server RSS before reloads: {before:.0f} MB", flush=True)
    quiet = [await run_streams(target, a.streams, 10.0, CHUNK_S, DELAY_S, None, 0)
             for _ in range(2 if a.streams else 0)]
    done = asyncio.Event()
    streaming = asyncio.create_task(streams_until(target, a.streams, done)) if a.streams else None
    try:
        measured = await reloads(target, server_pid, a.reloads, a.model)
    finally:
        done.set()
        during = await streaming if streaming else []
    await asyncio.sleep(1.0)
    after = rss_mb(server_pid)
    times = sorted(s for s, _ in measured)
    print(f"\n{a.reloads} reloads of {a.model} with {a.streams} real-time streams: reload time median "
          f"{times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s; server RSS {before:.0f} MB before, "
          f"{max(r for _, r in measured):.0f} MB at most after a reload, {after:.0f} MB after the last "
          f"({after - before:+.0f} MB, {after / before - 1:+.1%})")
    if a.streams:
        print("\n| phase | 10 s runs | partial p50 (ms) | p95 | p99 | errors |\n|---|---|---|---|---|---|")
        print(summary("no reloads", quiet))
        print(summary(f"{a.reloads} reloads", during))


def main() -> None:
    argv = sys.argv[1:]
    server_args = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(prog="python -m service.tools.reload_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--streams", type=int, default=8, help="real-time streams throughout (0: reloads alone)")
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="the directory served and reloaded")
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    server, target = start_server(["--provider", "cpu", "--model", str(a.model), *server_args])
    try:
        asyncio.run(run(a, server.pid, target))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
