"""Scale-out on one machine: replicas behind a real L7 gRPC proxy (NGINX `grpc_pass`).

    python -m service.tools.scaleout [--replicas 3] [--streams 12] [--seconds 12] [-- SERVER FLAGS]

Starts --replicas servers and NGINX (Debian's nginx) on loopback, NGINX balancing each call
round robin over them, then through the proxy:

1. spread: --streams real-time streams (the sample clips, 100 ms messages); each
   replica's share of them, from its /metrics;
2. capacity: unary Recognize throughput (4 at a time per replica) through the proxy
   against one replica alone; on one machine the replicas share its cores, so the ratio
   is bounded by them, not by the replica count;
3. drain: --streams streams, and 3 s in, SIGTERM to replica 1 and a second wave of
   streams: the streams it held end with their finals; a new one NGINX still sends it
   gets UNAVAILABLE, and retried (as gRPC clients retry that code) lands on another;
4. kill: --streams streams, and 3 s in, SIGKILL to replica 2: only the streams it held
   fail, and the load generator retries each from the start on the others.
"""

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.tools.benchmark import unary_throughput
from service.tools.loadgen import RATE, free_port, start_server, test_audio

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    upstream asr {{ {servers} }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{ grpc_pass grpc://asr; grpc_read_timeout 330s; grpc_send_timeout 330s; }}
    }}
}}
"""
Encoding = asr_pb2.RecognitionConfig.AudioEncoding


def metric(port: int, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def stream(stub, pcm: bytes) -> str:
    """One real-time stream; its outcome: OK (finals received) or the status code's name."""
    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=Encoding.LINEAR16, sample_rate_hertz=RATE)))
        step = RATE // 10 * 2
        started = time.perf_counter()
        for i, offset in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, started + i * 0.1 - time.perf_counter()))
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset:offset + step])
    try:
        finals = [r async for r in stub.StreamingRecognize(requests(), timeout=120)
                  if r.results and r.results[0].is_final]
    except grpc.aio.AioRpcError as e:
        return e.code().name
    return "OK" if finals else "no finals"


async def wave(target: str, n: int, pcm: bytes, retry: bool = False) -> tuple[list[str], int]:
    """n streams at once (spread over one second); with `retry`, a failed one starts again once.
    Returns the first outcomes and how many retries ended OK."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)

        async def one(i):
            await asyncio.sleep(i / n)
            first = await stream(stub, pcm)
            return first, (await stream(stub, pcm) == "OK") if retry and first != "OK" else False
        outcomes = await asyncio.gather(*(one(i) for i in range(n)))
    return [o for o, _ in outcomes], sum(r for _, r in outcomes)


def streams_ok(ports: list[int]) -> list[float]:
    return [metric(p, "asr_requests_total", method="StreamingRecognize", code="OK") for p in ports]


async def run(a, replicas, proxy: str) -> None:
    pcm = test_audio(a.seconds).astype("<i2").tobytes()
    ports = [m for _, _, m in replicas]
    print(f"{len(replicas)} replicas behind NGINX grpc_pass (round robin per call), {a.streams} real-time streams "
          f"of {a.seconds:g} s, {os.cpu_count()} CPUs\n")

    before = streams_ok(ports)
    outcomes, _ = await wave(proxy, a.streams, pcm)
    share = [b - s for b, s in zip(streams_ok(ports), before)]
    print(f"spread: outcomes {dict((o, outcomes.count(o)) for o in set(outcomes))}; streams per replica "
          f"{[int(x) for x in share]}")

    through_proxy = await unary_throughput(proxy, 40, 4 * len(replicas))
    alone = await unary_throughput(replicas[0][1], 40, 4)
    print(f"capacity (unary Recognize, 4 at a time per replica): {through_proxy:.1f} audio s per wall s through "
          f"the proxy ({len(replicas)} replicas), {alone:.1f} with one replica alone: "
          f"ratio {through_proxy / alone:.2f} "
          f"(the replicas share this machine's {os.cpu_count()} cores)")

    before = streams_ok(ports)
    first = asyncio.create_task(wave(proxy, a.streams, pcm))
    await asyncio.sleep(3)
    replicas[1][0].send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    second = await wave(proxy, a.streams, pcm, retry=True)  # UNAVAILABLE is gRPC's code to retry
    first = await first
    alive = [0, *range(2, len(replicas))]
    after = {i: metric(ports[i], "asr_requests_total", method="StreamingRecognize", code="OK") for i in alive}
    replicas[1][0].wait(60)
    waves = [{o: outcomes.count(o) for o in set(outcomes)} for outcomes in (first[0], second[0])]
    print(f"drain (SIGTERM to replica 1 three seconds in): first wave {waves[0]}, second wave {waves[1]}, "
          f"{second[1]} retried OK; the others served {int(sum(after[i] - before[i] for i in alive))}; "
          f"replica 1 exited "
          f"{replicas[1][0].returncode}")

    held = None
    task = asyncio.create_task(wave(proxy, a.streams, pcm, retry=True))
    await asyncio.sleep(3)
    if len(replicas) > 2:
        held = metric(ports[2], "asr_active_streams")
        replicas[2][0].send_signal(signal.SIGKILL)
    outcomes, retried = await task
    failed = len(outcomes) - outcomes.count("OK")
    print(f"kill (SIGKILL to replica 2 three seconds in, holding {held and int(held)} streams): {failed} streams "
          f"failed ({', '.join(sorted(set(o for o in outcomes if o != 'OK')))}), {retried} of them retried OK")



def main() -> None:
    p = argparse.ArgumentParser(prog="python -m service.tools.scaleout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--streams", type=int, default=12)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("server_args", nargs="*", help="after --: flags for the servers")
    a = p.parse_args()
    if a.replicas < 3:
        p.error("--replicas must be at least 3 (one is drained, one killed)")
    replicas, proxy = [], None
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)  # NGINX's workers run as another user
        try:
            for _ in range(a.replicas):
                metrics_port = free_port()
                # round robin is even over time, not at every instant: room for a replica's extra calls
                process, target = start_server(["--metrics-port", str(metrics_port), "--max-concurrent-recognize",
                                                "16", *a.server_args])
                replicas.append((process, target, metrics_port))
            port = free_port()
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=tmp, port=port,
                                              servers=" ".join(f"server {t};" for _, t, _ in replicas)))
            proxy = subprocess.Popen(["nginx", "-c", str(conf), "-p", tmp, "-g", "daemon off;"])
            time.sleep(1)
            asyncio.run(run(a, replicas, f"127.0.0.1:{port}"))
        finally:
            for process, _, _ in replicas:
                if process.poll() is None:
                    process.terminate()
                    process.wait(30)
            if proxy:
                proxy.terminate()
                proxy.wait(10)


if __name__ == "__main__":
    main()
