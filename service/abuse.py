"""Abusive clients, measured: what each costs the server and whether a well-behaved stream notices.

    python -m service.abuse [--seconds 10] [--connections 900] [-- SERVER FLAGS]

Starts `python -m service` on loopback and runs, one after another for --seconds each, a
reference load of 4 real-time streams (the sample clips, 100 ms messages, interim results)
beside each abuse:

- none (the baseline);
- tiny messages: 4 streams sending 2-byte messages as fast as they can;
- idle connections: --connections TCP connections that never start a call;
- a client that stops reading: 4 streams sending audio as fast as they can with interim
  results on, never reading a response (gRPC flow control must hold them).

Prints per abuse the reference streams' p95 partial latency and errors, the server's CPU
use (cores) and its resident memory at the end (MB).
"""

import argparse
import asyncio
import socket
import time

import grpc
import numpy as np

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.benchmark import run_streams
from service.loadgen import RATE, cpu_seconds, rss_mb, start_server, test_audio

Encoding = asr_pb2.RecognitionConfig.AudioEncoding
STREAM_CONFIG = asr_pb2.StreamingRecognitionConfig(
    config=asr_pb2.RecognitionConfig(encoding=Encoding.LINEAR16, sample_rate_hertz=RATE), interim_results=True)


async def tiny_messages(target: str, seconds: float, stop: asyncio.Event) -> None:
    async def one():
        async def requests():
            yield asr_pb2.StreamingRecognizeRequest(streaming_config=STREAM_CONFIG)
            while not stop.is_set():
                yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\x00\x00")
        try:
            async for _ in stub.StreamingRecognize(requests(), timeout=seconds + 30):
                pass
        except grpc.aio.AioRpcError:
            pass
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        await asyncio.gather(*(one() for _ in range(4)))


async def idle_connections(target: str, count: int, stop: asyncio.Event) -> None:
    host, port = target.rsplit(":", 1)
    sockets = []
    for _ in range(count):
        sockets.append(socket.create_connection((host, int(port))))
    await stop.wait()
    for s in sockets:
        s.close()


async def not_reading(target: str, seconds: float, stop: asyncio.Event) -> None:
    audio = test_audio(seconds, None).astype("<i2").tobytes()

    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=STREAM_CONFIG)
        for i in range(0, len(audio), 3200):
            if stop.is_set():
                return
            yield asr_pb2.StreamingRecognizeRequest(audio_content=audio[i:i + 3200])
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        calls = [stub.StreamingRecognize(requests(), timeout=seconds + 30) for _ in range(4)]
        await stop.wait()  # never reads a response
        for call in calls:
            call.cancel()


async def measure(target: str, pid: int, a, abuse) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        info = await asr_pb2_grpc.SpeechStub(channel).GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=30)
    info_chunk = info.chunk_duration.ToTimedelta().total_seconds()
    info_delay = info.lookahead.ToTimedelta().total_seconds()
    stop = asyncio.Event()
    background = asyncio.create_task(abuse(stop)) if abuse else None
    await asyncio.sleep(1.0)  # the abuse is under way
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    r = await run_streams(target, 4, a.seconds, info_chunk, info_delay, None, 0)
    cores = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
    memory = rss_mb(pid)
    stop.set()
    if background:
        await background
    p95 = f"{1000 * np.percentile(r['partial'], 95):.0f}" if len(r["partial"]) else "-"
    return f"{p95} | {r['errors'] + r['refused']} | {cores:.2f} | {memory:.0f}"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m service.abuse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=900, help="idle TCP connections (mind ulimit -n)")
    p.add_argument("server_args", nargs="*", help="after --: flags for the server")
    a = p.parse_args()
    process, target = start_server(a.server_args)
    abuses = {
        "none": None,
        "4 streams of 2-byte messages, as fast as they go": lambda stop: tiny_messages(target, a.seconds, stop),
        f"{a.connections} idle TCP connections": lambda stop: idle_connections(target, a.connections, stop),
        "4 streams that never read a response": lambda stop: not_reading(target, a.seconds, stop),
    }
    try:
        print(f"4 reference real-time streams, {a.seconds:g} s each, beside each abuse\n")
        print("| abuse | reference p95 partial (ms) | reference errors | server CPU (cores) | server RSS at the end (MB) |")
        print("| --- | --- | --- | --- | --- |")
        for label, abuse in abuses.items():
            print(f"| {label} | {asyncio.run(measure(target, process.pid, a, abuse))} |", flush=True)
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
