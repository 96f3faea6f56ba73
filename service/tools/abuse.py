"""Abusive clients, measured: what each costs the server and whether well-behaved streams notice.

    python -m service.tools.abuse [--seconds 10] [--connections 900] [-- SERVER FLAGS]

Starts `python -m service` on loopback with two bearer tokens, one for the abusive client and
one for everyone else, and the default admission rules (per-client limits, load shedding).
Runs, one after another for --seconds each, a reference load of 8 real-time streams (the sample
clips, 100 ms messages, interim results) beside each abuse:

- none (the baseline);
- tiny messages: a stream of 2-byte messages as fast as it can, reconnecting when ended;
- a fast sender: a stream of 100 KB (3.2 s) messages as fast as it can, reconnecting;
- stalled streams: 50 streams that send their config and 100 ms of audio, then nothing (a
  client that was SIGSTOPped);
- idle connections: --connections TCP connections that never start a call;
- a client that stops reading: 4 streams sending audio as fast as they can with interim
  results on, never reading a response (gRPC flow control must hold them).

Prints per abuse the reference streams' p95 partial latency, their refusals and errors, how the
abusive client's calls ended, the server's CPU use (cores) and its resident memory at the end.
"""

import argparse
import asyncio
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.config import ServerConfig
from service.tools.benchmark import run_streams
from service.tools.loadgen import RATE, cpu_seconds, rss_mb, start_server, test_audio

Encoding = asr_pb2.RecognitionConfig.AudioEncoding
STREAM_CONFIG = asr_pb2.StreamingRecognitionConfig(
    config=asr_pb2.RecognitionConfig(encoding=Encoding.LINEAR16, sample_rate_hertz=RATE), interim_results=True)
QUIET_CONFIG = asr_pb2.StreamingRecognitionConfig(config=STREAM_CONFIG.config)  # no interim results
ABUSER, REFERENCE = "abusive-client-token", "reference-client-token"
REFERENCE_STREAMS = 8
# The defaults a deployment runs with (the load generator's server lifts the per-client limits).
DEFAULT_RULES = ["--auth-tokens-file", "{tokens}",
                 "--max-streams-per-client", str(ServerConfig.max_streams_per_client),
                 "--max-recognize-per-client", str(ServerConfig.max_recognize_per_client)]
Abuse = Callable[[str, asyncio.Event, Counter], Awaitable[None]]


def _bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


async def _stream(stub, messages, outcomes: Counter, read: bool = True) -> None:
    """One call of the abusive client; `outcomes` counts how it ended (its status name)."""
    try:
        call = stub.StreamingRecognize(messages, metadata=_bearer(ABUSER))
        if read:
            async for _ in call:
                pass
        else:
            await call.wait_for_connection()
            await asyncio.Event().wait()  # held until cancelled
        outcomes["OK"] += 1
    except grpc.aio.AioRpcError as e:
        outcomes[e.code().name] += 1


async def _again(one: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """A client that calls again whenever its call ends, until stopped."""
    while not stop.is_set():
        task = asyncio.create_task(one())
        done, _ = await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def tiny_messages(target: str, stop: asyncio.Event, outcomes: Counter) -> None:
    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=QUIET_CONFIG)
        while not stop.is_set():
            yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\x00\x00")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        await _again(lambda: _stream(stub, requests(), outcomes), stop)


async def fast_sender(target: str, stop: asyncio.Event, outcomes: Counter) -> None:
    audio = test_audio(3.2, None).astype("<i2").tobytes()  # 100 KB a message

    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=QUIET_CONFIG)
        for _ in range(90):  # 288 s: within --max-stream-audio-seconds
            if stop.is_set():
                return
            yield asr_pb2.StreamingRecognizeRequest(audio_content=audio)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        await _again(lambda: _stream(stub, requests(), outcomes), stop)


async def stalled_streams(target: str, stop: asyncio.Event, outcomes: Counter, count: int = 50) -> None:
    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=QUIET_CONFIG)
        yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\x00\x00" * int(0.1 * RATE))
        await stop.wait()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        calls = [asyncio.create_task(_stream(stub, requests(), outcomes)) for _ in range(count)]
        await stop.wait()
        await asyncio.sleep(0.5)  # the server's refusals arrive; then the stalled calls go
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


async def idle_connections(target: str, stop: asyncio.Event, outcomes: Counter, count: int = 900) -> None:
    host, port = target.rsplit(":", 1)
    sockets = [socket.create_connection((host, int(port))) for _ in range(count)]
    await stop.wait()
    for s in sockets:
        s.close()


async def not_reading(target: str, stop: asyncio.Event, outcomes: Counter) -> None:
    audio = test_audio(30, None).astype("<i2").tobytes()

    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=STREAM_CONFIG)
        for i in range(0, len(audio), 3200):
            if stop.is_set():
                return
            yield asr_pb2.StreamingRecognizeRequest(audio_content=audio[i:i + 3200])
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        calls = [asyncio.create_task(_stream(stub, requests(), outcomes, read=False)) for _ in range(4)]
        await stop.wait()
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


def abuses(connections: int = 900) -> dict[str, Abuse | None]:
    return {
        "none": None,
        "a stream of 2-byte messages, as fast as it goes": tiny_messages,
        "a stream of 100 KB (3.2 s) messages, as fast as it goes": fast_sender,
        "50 stalled streams (config and 100 ms, then nothing)": stalled_streams,
        f"{connections} idle TCP connections":
            lambda target, stop, outcomes: idle_connections(target, stop, outcomes, connections),
        "4 streams that never read a response": not_reading,
    }


async def measure(target: str, pid: int, seconds: float, abuse: Abuse | None) -> dict:
    """The reference streams' latencies and refusals beside `abuse`, and what the abuse got."""
    async with grpc.aio.insecure_channel(target) as channel:
        info = await asr_pb2_grpc.SpeechStub(channel).GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=30,
                                                                     metadata=_bearer(REFERENCE))
    stop, outcomes = asyncio.Event(), Counter()
    background = asyncio.create_task(abuse(target, stop, outcomes)) if abuse else None
    await asyncio.sleep(2.0)  # the abuse is under way
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    r = await run_streams(target, REFERENCE_STREAMS, seconds, info.chunk_duration.ToTimedelta().total_seconds(),
                          info.lookahead.ToTimedelta().total_seconds(), None, 0, metadata=_bearer(REFERENCE))
    cores = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
    stop.set()
    if background:
        await background
    return {"p95_ms": 1000 * float(np.percentile(r["partial"], 95)) if len(r["partial"]) else float("nan"),
            "refused": r["refused"] + r["ended"], "errors": r["errors"], "abuser": outcomes, "cores": cores,
            "rss_mb": rss_mb(pid)}


def start_with_default_rules(server_args: list[str], folder: Path):
    """A local server with the two clients' tokens and the default per-client limits."""
    tokens = folder / "tokens.txt"
    tokens.write_text(f"{ABUSER}\n{REFERENCE}\n")
    return start_server([arg.format(tokens=tokens) for arg in DEFAULT_RULES] + server_args)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m service.tools.abuse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=900, help="idle TCP connections (mind ulimit -n)")
    p.add_argument("server_args", nargs="*", help="after --: flags for the server")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        process, target = start_with_default_rules(a.server_args, Path(folder))
        try:
            print(f"{REFERENCE_STREAMS} reference real-time streams, {a.seconds:g} s each, beside each abuse\n")
            print("| abuse | reference p95 partial (ms) | reference refused / errors | the abusive calls ended "
                  "| server CPU (cores) | server RSS at the end (MB) |")
            print("| --- | --- | --- | --- | --- | --- |")
            for label, abuse in abuses(a.connections).items():
                m = asyncio.run(measure(target, process.pid, a.seconds, abuse))
                ended = ", ".join(f"{code} {n}" for code, n in sorted(m["abuser"].items())) or "-"
                print(f"| {label} | {m['p95_ms']:.0f} | {m['refused']} / {m['errors']} | {ended} | {m['cores']:.2f} "
                      f"| {m['rss_mb']:.0f} |", flush=True)
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
