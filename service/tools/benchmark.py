"""Load benchmark: concurrent real-time streams and unary throughput, over loopback.

    python -m service.tools.benchmark [--streams 1,8,16,32,64] [--seconds 10] [--target HOST:PORT]
        [--clips MANIFEST] [--decoder native,python] [--models DIR,DIR] [--beam-width N]
        [--ramp-seconds S] [-- SERVER FLAGS]

Without --target it starts `python -m service` on free loopback ports (extra
server flags after `--`) and reads that process's CPU time; with --decoder it
does so once per beam search engine, with --models once per model directory, and
measures them side by side, in one run.
Each stream sends audio as 100 ms LINEAR16 messages at real-time pace with
interim results on, then half-closes: the sample clips, or with --clips the
first 40 clips of a JSONL manifest ({"audio": path} a line; real speech, about
which a model is less sure than about the samples, makes the beam search work
harder), looped with pauses, each stream starting at another clip. Measured per
stream count:

- partial latency: the message that completes a model chunk (its last 25 ms
  window) is sent -> the first interim or final result whose result_end_time
  covers that chunk's output, for the last chunk a result newly covers (chunks
  in pauses get no interim result: the next result covers them too, but their
  wait is the pause, not the server's work). With a look-ahead model a chunk's
  output ends the look-ahead before the chunk does; the chunk length and
  look-ahead are algorithmic delay on top of what this measures;
- first text: the stream's first audio message sent -> its first result with text (interim
  or final): the chunk, the look-ahead and the server's work before the first word shows,
  from the start of each clip's audio (the same clips for every server compared);
- final latency: half-close -> the last final result;
- server CPU seconds per second of audio;
- finals left to the first pass: with a second pass, finals it skipped (second_pass_fallback:
  the server was shedding load, or more than --max-pending-second-passes waited);
- refused: streams the server shed when they called (RESOURCE_EXHAUSTED before any
  result); ended: streams it ended behind real time after answering them (capacity lost
  after admission, e.g. with --neighbour-cores); and other errors.

Streams start spread over one message, or with --ramp-seconds over that long (as
callers arrive, so that load shedding can act on the lag they cause).

With --request-cost it measures instead the server CPU per audio second of a
default Recognize and of the costliest one the server accepts (beam 256, 100
hotword phrases of 100 characters, 10 alternatives, word offsets).

Then unary throughput: Recognize on the sample clips, 4 at a time. Prints a Markdown
table, and per engine the most streams held: p95 partial latency within
--held-ms (150) and no errors.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.tools.loadgen import RATE, SAMPLES, cpu_seconds, read_clips, start_server, test_audio

MESSAGE_S = 0.1
CLIP_LIMIT = 40  # clips read from --clips
WINDOW_LOOKAHEAD_S = 0.015  # a 25 ms window every 10 ms: a frame needs 15 ms past its hop
Encoding = asr_pb2.RecognitionConfig.AudioEncoding


async def one_stream(stub, pcm: bytes, chunk_s: float, delay_s: float, start_delay: float, beam_width: int,
                     out: dict, metadata: tuple = ()) -> None:
    """One real-time stream; `out` gets its latencies, and its error code if it failed."""
    await asyncio.sleep(start_delay)
    step = int(MESSAGE_S * RATE) * 2
    sent_at: list[tuple[float, float]] = []  # (audio seconds sent so far, send time)

    async def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=Encoding.LINEAR16, sample_rate_hertz=RATE,
                                             decoder=asr_pb2.DecoderOptions(beam_width=beam_width)),
            interim_results=True))
        started = out["started"] = time.perf_counter()
        for i, offset in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, started + i * MESSAGE_S - time.perf_counter()))
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset:offset + step])
            sent_at.append((min(len(pcm), offset + step) / 2 / RATE, time.perf_counter()))
        out["half_close"] = time.perf_counter()

    covered = 0.0  # audio seconds whose chunk latency was measured
    try:
        async for response in stub.StreamingRecognize(requests(), metadata=metadata):
            now = time.perf_counter()
            for result in response.results:
                if "first_text" not in out and result.alternatives and result.alternatives[0].transcript:
                    out["first_text"] = now - out["started"]
                end = result.result_end_time.ToTimedelta().total_seconds()
                # the last model chunk whose output this result newly covers
                newly = False
                while covered + chunk_s - delay_s <= end + 1e-6:
                    covered, newly = covered + chunk_s, True
                # the chunk is complete once its last window is: 15 ms past its end
                sent = next((t for audio_s, t in sent_at if audio_s >= covered + WINDOW_LOOKAHEAD_S - 1e-6), None)
                if newly and sent is not None and "half_close" not in out:
                    out["partial"].append(now - sent)
                if result.is_final:
                    out["last_final"] = now
                    out["finals"] += 1
                    out["fell_back"] += result.second_pass_fallback
    except grpc.aio.AioRpcError as e:
        # grpc aio's client reports a refusal that races with its own next write as INTERNAL "Internal
        # error from Core" (grpc/grpc#36066): the server's asr_shed_total counts them as refusals.
        shed = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED or (
            e.code() == grpc.StatusCode.INTERNAL and e.details() == "Internal error from Core")
        answered = "last_final" in out or out["partial"]
        # Refused when it called, ended later (behind real time), or another error.
        out["errors" if not shed else "ended" if answered else "refused"].append(e.code().name)
        return
    if "half_close" in out and "last_final" in out:
        out["final"] = out["last_final"] - out["half_close"]


async def run_streams(target: str, n: int, seconds: float, chunk_s: float, delay_s: float,
                      clips: list[np.ndarray] | None, beam_width: int, ramp_s: float = 0.0,
                      metadata: tuple = ()) -> dict:
    pcms = [test_audio(seconds, clips, first=i).astype("<i2").tobytes() for i in range(n if clips else 1)]
    results = [{"partial": [], "errors": [], "refused": [], "ended": [], "finals": 0, "fell_back": 0} for _ in range(n)]
    spread = ramp_s or MESSAGE_S  # at least over one message, so that streams do not arrive in lockstep
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        await asyncio.gather(*(one_stream(stub, pcms[i % len(pcms)], chunk_s, delay_s, i * spread / n, beam_width, r,
                                          metadata) for i, r in enumerate(results)))
    partial = np.array([x for r in results for x in r["partial"]])
    final = np.array([r["final"] for r in results if "final" in r])
    first = np.array([r["first_text"] for r in results if "first_text" in r])
    refused = sum(len(r["refused"]) for r in results)
    codes = Counter(code for r in results for code in r["errors"])
    return {"partial": partial, "final": final, "first": first, "errors": sum(codes.values()), "codes": codes,
            "refused": refused, "ended": sum(len(r["ended"]) for r in results), "audio_s": (n - refused) * seconds,
            "finals": sum(r["finals"] for r in results), "fell_back": sum(r["fell_back"] for r in results)}


async def unary_throughput(target: str, requests: int, concurrency: int) -> float:
    clips = [(SAMPLES / n).read_bytes() for n in ("what_time.wav", "phone.flac")]
    audio_s = [sf.info(SAMPLES / n).duration for n in ("what_time.wav", "phone.flac")]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        gate = asyncio.Semaphore(concurrency)

        async def one(i):
            async with gate:
                while True:  # a server shedding load says when to come back: with backoff
                    try:
                        return await stub.Recognize(asr_pb2.RecognizeRequest(audio_content=clips[i % 2]))
                    except grpc.aio.AioRpcError as e:
                        if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        await asyncio.sleep(0.2)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return sum(audio_s[i % 2] for i in range(requests)) / (time.perf_counter() - started)


def worst_config() -> asr_pb2.RecognitionConfig:
    """The costliest request the server accepts: widest beam, most and longest hotwords, most
    alternatives, word offsets, the LM on."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    phrases = [" ".join(words[(i + j) % 10] + str(i) for j in range(20))[:100] for i in range(100)]
    return asr_pb2.RecognitionConfig(max_alternatives=10, enable_word_time_offsets=True,
                                     speech_contexts=[asr_pb2.SpeechContext(phrases=phrases, boost=100)],
                                     decoder=asr_pb2.DecoderOptions(beam_width=256))


async def request_cost(target: str, pid: int, requests: int) -> None:
    """Server CPU seconds per audio second of the default request and of the costliest allowed."""
    clips = [(SAMPLES / n).read_bytes() for n in ("what_time.wav", "phone.flac")]
    audio_s = sum(sf.info(SAMPLES / n).duration for n in ("what_time.wav", "phone.flac")) * requests / 2
    async with grpc.aio.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        for label, config in (("default request", asr_pb2.RecognitionConfig()), ("costliest allowed", worst_config())):
            cpu0 = cpu_seconds(pid)
            started = time.perf_counter()
            for i in range(requests):
                await stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio_content=clips[i % 2]), timeout=120)
            print(f"{label}: {(cpu_seconds(pid) - cpu0) / audio_s:.3f} server CPU s per audio s, "
                  f"{audio_s / (time.perf_counter() - started):.1f} audio s per wall s (one at a time)", flush=True)


async def noisy_neighbour(cores: int, after_s: float) -> None:
    """`cores` processes that busy-loop from `after_s` on, until cancelled: capacity lost after admission."""
    if not cores:
        return
    await asyncio.sleep(after_s)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        await asyncio.Event().wait()
    finally:
        for process in loops:
            process.kill()
            process.wait()


def pct(values: np.ndarray, q: float) -> str:
    return f"{1000 * np.percentile(values, q):.0f}" if len(values) else "-"


async def table(servers: list[tuple[str, str, int | None]], a, clips: list[np.ndarray] | None) -> None:
    """Rows for each (label, target, server pid): the stream counts, then unary throughput."""
    timing = {}
    for label, target, _ in servers:
        async with grpc.aio.insecure_channel(target) as channel:
            info = await asr_pb2_grpc.SpeechStub(channel).GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=30)
        timing[label] = (info.chunk_duration.ToTimedelta().total_seconds(),
                         info.lookahead.ToTimedelta().total_seconds())
        print(f"{label}: model {info.name} {info.version} on {info.provider}; {timing[label][0] * 1000:.0f} ms "
              f"chunks, {timing[label][1] * 1000:.0f} ms look-ahead", flush=True)
    print(f"beam {a.beam_width or 'of the model directory'}; {a.seconds:.0f} s per stream of "
          f"{f'{len(clips)} clips of {a.clips}' if clips else 'the sample clips'}; {os.cpu_count()} CPUs", flush=True)
    if a.neighbour_cores:
        print(f"a noisy neighbour: {a.neighbour_cores} busy-looping processes from {a.neighbour_after:g} s into "
              "each run", flush=True)
    print("\n| server | streams | partial p50 / p95 / p99 (ms) | first text p50 / p95 (ms) | final p50 / p95 (ms) "
          "| server CPU s per audio s | finals left to the first pass (second pass skipped) | refused "
          "| ended behind real time | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    held, unary = {}, {}
    for label, target, pid in servers:
        held[label] = 0
        for n in a.streams:
            cpu0 = cpu_seconds(pid) if pid else None
            neighbour = asyncio.create_task(noisy_neighbour(a.neighbour_cores, a.neighbour_after))
            try:
                r = await run_streams(target, n, a.seconds, *timing[label], clips, a.beam_width, a.ramp_seconds)
            finally:
                neighbour.cancel()
                await asyncio.gather(neighbour, return_exceptions=True)
            cpu = f"{(cpu_seconds(pid) - cpu0) / max(r['audio_s'], 1e-9):.3f}" if pid else "-"
            codes = " (" + ", ".join(f"{c} {k}" for k, c in r["codes"].items()) + ")" if r["errors"] else ""
            print(f"| {label} | {n} | {pct(r['partial'], 50)} / {pct(r['partial'], 95)} / {pct(r['partial'], 99)} "
                  f"| {pct(r['first'], 50)} / {pct(r['first'], 95)} | {pct(r['final'], 50)} / {pct(r['final'], 95)} "
                  f"| {cpu} | {r['fell_back']} of {r['finals']} | {r['refused']} | {r['ended']} "
                  f"| {r['errors']}{codes} |", flush=True)
            if (not r["errors"] and len(r["partial"]) and np.percentile(r["partial"], 95) * 1000 <= a.held_ms
                    and (not a.held_final_ms or np.percentile(r["final"], 95) * 1000 <= a.held_final_ms)):
                held[label] = max(held[label], n - r["refused"])
        unary[label] = await unary_throughput(target, a.unary_requests, 4)
    print()
    for label in held:
        final = f", p95 final <= {a.held_final_ms:g} ms" if a.held_final_ms else ""
        print(f"{label}: most streams held (p95 partial <= {a.held_ms:g} ms{final}, no errors): {held[label]}; "
              f"unary Recognize, 4 concurrent: {unary[label]:.1f} audio seconds per wall second")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m service.tools.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="a running server (default: start one on loopback)")
    p.add_argument("--streams", default="1,8,16,32,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--seconds", type=float, default=10.0, help="audio per stream")
    p.add_argument("--unary-requests", type=int, default=200)
    p.add_argument("--clips", type=Path, help="JSONL manifest of the audio to stream (default: the sample clips)")
    p.add_argument("--decoder", help="beam search engines to compare, each on its own server (e.g. native,python)")
    p.add_argument("--beam-width", type=int, default=0, help="streams ask for this beam (0: the server's default)")
    p.add_argument("--models", help="model directories to compare, each on its own server (comma-separated)")
    p.add_argument("--held-ms", type=float, default=150.0, help="p95 partial latency a held stream count keeps")
    p.add_argument("--held-final-ms", type=float, default=0.0,
                   help="p95 final latency a held stream count keeps too (0: not asked)")
    p.add_argument("--ramp-seconds", type=float, default=0.0, help="start the streams spread over this long")
    p.add_argument("--neighbour-cores", type=int, default=0,
                   help="a noisy neighbour: this many busy-looping processes beside the server, from "
                        "--neighbour-after seconds into each run (capacity lost after admission)")
    p.add_argument("--neighbour-after", type=float, default=10.0)
    p.add_argument("--request-cost", action="store_true",
                   help="instead: CPU per audio second of a default Recognize and of the costliest one allowed")
    p.add_argument("server_args", nargs="*", help="after --: flags for the servers it starts")
    a = p.parse_args()
    if a.target and (a.decoder or a.models or a.request_cost):
        p.error("--decoder, --models and --request-cost start their own servers: not with --target")
    clips = read_clips(a.clips, CLIP_LIMIT) if a.clips else None
    engines = a.decoder.split(",") if a.decoder else [None]
    models = a.models.split(",") if a.models else [None]
    servers, processes = [], []
    try:
        if a.target:
            servers.append(("-", a.target, None))
        for model in models if not a.target else []:
            for engine in engines:
                flags = ["--max-concurrent-streams", str(max(a.streams)), *a.server_args]
                process, target = start_server(flags + (["--decoder", engine] if engine else [])
                                               + (["--model", model] if model else []))
                processes.append(process)
                label = " ".join(x for x in (Path(model).name if model else None, engine) if x) or "default"
                servers.append((label, target, process.pid))
        if a.request_cost:
            for label, target, pid in servers:
                print(f"decoder {label}:")
                asyncio.run(request_cost(target, pid, 20))
        else:
            asyncio.run(table(servers, a, clips))
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
