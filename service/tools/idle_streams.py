"""Memory per stream: many open streams that have spoken and now wait, per model side by side.

    python -m service.tools.idle_streams [--streams 1000] [--ramp-seconds 30] [--models DIR,DIR] [-- SERVER FLAGS]

Starts `python -m service` per model directory (default: the bundled model) on loopback, opens
--streams StreamingRecognize calls spread over --ramp-seconds, each sending --speak-seconds of
the sample clips at real-time pace and then nothing (the call stays open: the stream's model
state, features and beam are held), and prints the server's resident memory before and with
them, and per stream. The servers run with room for that many streams and a long idle timeout.
"""

import argparse
import asyncio
import time
from pathlib import Path

import grpc

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.tools.loadgen import RATE, rss_mb, start_server, test_audio

MESSAGE_S = 0.1
STREAMS_PER_CHANNEL = 100  # HTTP/2 connections stay below their concurrent-stream limits


async def hold(stub, pcm: bytes, start_delay: float, spoken: asyncio.Event, release: asyncio.Event,
               outcomes: list[str]) -> None:
    await asyncio.sleep(start_delay)
    config = asr_pb2.StreamingRecognitionConfig(config=asr_pb2.RecognitionConfig(
        encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=RATE), interim_results=True)

    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=config)
        step = int(MESSAGE_S * RATE) * 2
        for i in range(0, len(pcm), step):
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[i:i + step])
            await asyncio.sleep(MESSAGE_S)
        spoken.set()
        await release.wait()  # open and silent until released

    call = stub.StreamingRecognize(requests())
    try:
        async for _ in call:
            pass
        outcomes.append("ended")
    except grpc.aio.AioRpcError as e:
        outcomes.append("cancelled" if e.code() == grpc.StatusCode.CANCELLED else e.code().name)
    except asyncio.CancelledError:
        call.cancel()
        outcomes.append("held")


async def measure(target: str, pid: int, a) -> tuple[float, float, dict]:
    pcm = test_audio(a.speak_seconds)[: int(a.speak_seconds * RATE)].tobytes()
    before = rss_mb(pid)
    channels = [grpc.aio.insecure_channel(target) for _ in range(-(-a.streams // STREAMS_PER_CHANNEL))]
    release, outcomes = asyncio.Event(), []
    spoken = [asyncio.Event() for _ in range(a.streams)]
    tasks = [asyncio.create_task(hold(asr_pb2_grpc.SpeechStub(channels[i // STREAMS_PER_CHANNEL]), pcm,
                                      a.ramp_seconds * i / a.streams, spoken[i], release, outcomes))
             for i in range(a.streams)]
    await asyncio.wait([asyncio.create_task(e.wait()) for e in spoken], timeout=a.ramp_seconds + 60)
    await asyncio.sleep(a.settle_seconds)  # the last chunks decoded
    with_streams = rss_mb(pid)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    counts = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    return before, with_streams, counts


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m service.tools.idle_streams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--ramp-seconds", type=float, default=30.0, help="open the streams spread over this long")
    p.add_argument("--speak-seconds", type=float, default=1.0, help="audio each stream sends before it waits")
    p.add_argument("--settle-seconds", type=float, default=5.0)
    p.add_argument("--models", help="model directories, each on its own server (comma-separated)")
    p.add_argument("server_args", nargs="*", help="after --: flags for the servers it starts")
    a = p.parse_args()
    print("| model | streams | server RSS before (MB) | with the streams (MB) | per stream (MB) | outcomes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model in a.models.split(",") if a.models else [None]:
        flags = ["--max-concurrent-streams", str(a.streams), "--max-connections", str(a.streams + 100),
                 "--stream-idle-timeout-seconds", str(a.ramp_seconds + a.settle_seconds + 300), *a.server_args]
        process, target = start_server(flags + (["--model", model] if model else []))
        try:
            started = time.monotonic()
            before, with_streams, counts = asyncio.run(measure(target, process.pid, a))
        finally:
            process.terminate()
            process.wait(30)
        print(f"| {Path(model).name if model else 'default'} | {a.streams} | {before:.0f} | {with_streams:.0f} "
              f"| {(with_streams - before) / a.streams:.2f} | {counts} ({time.monotonic() - started:.0f} s) |",
              flush=True)


if __name__ == "__main__":
    main()
