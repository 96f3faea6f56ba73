"""How fast and how well a long recording is transcribed whole, beside faster-whisper tiny.en.

    python -m service.tools.long_file_benchmark --manifest data/real_manifests/valid_speechocean762.jsonl \\
        [--minutes 60] [--parallel 1,4] [--streams 0] [--no-whisper] [-- SERVER ARGS...]

Builds one recording from the manifest's utterances (shuffled, seed 0) joined by pauses of
0.3-1 s of faint noise, as people pause between sentences, and writes it as MP3 (and its
transcript) under --work. Then, in one run and one after the other: for each --parallel value
(--file-parallel-segments) a server on loopback transcribes the MP3 posted to
`/v1/audio/transcriptions` (optionally beside --streams real-time streams, whose partial latency
is printed without and with the file); the same utterances are sent one by one to Recognize;
and faster-whisper tiny.en (int8, beam 5, 2 threads: `models.evaluate`'s anchor, its own
long-form decoding) transcribes the same audio. Prints wall time, audio seconds per wall
second, WER against the transcript and the server's peak RSS, side by side.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import jiwer
import numpy as np
import requests
import soundfile as sf

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.manifest import read_audio, read_manifest
from engine.text import normalize
from service.tools.benchmark import pct, run_streams
from service.tools.loadgen import free_port, start_server

RATE = 16000
CHUNK_S, DELAY_S = 0.32, 0.16  # the bundled model's chunk and look-ahead (what partial latency is measured on)


def build(manifest: Path, minutes: float, work: Path) -> tuple[Path, list[np.ndarray], list[str]]:
    """The recording (MP3), and its utterances and their normalized transcripts, in order."""
    rows = read_manifest(manifest)
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    parts, clips, texts, seconds = [], [], [], 0.0
    for row in rows:
        if seconds >= minutes * 60:
            break
        clip = read_audio(row["audio"], RATE)
        pause = (rng.standard_normal(int(RATE * rng.uniform(0.3, 1.0))) * 1e-3).astype(np.float32)
        parts += [clip, pause]
        clips.append(clip)
        texts.append(normalize(row["text"]))
        seconds += (len(clip) + len(pause)) / RATE
    if seconds < minutes * 60:
        print(f"the manifest holds {seconds / 60:.1f} minutes; using them all", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    mp3 = work / f"recording_{minutes:g}min.mp3"
    sf.write(mp3, np.concatenate(parts), RATE, format="MP3", subtype="MPEG_LAYER_III")
    (work / f"recording_{minutes:g}min.txt").write_text(" ".join(texts) + "\n")
    return mp3, clips, texts


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def post(url: str, path: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    with path.open("rb") as f:
        response = requests.post(url, files={"file": (path.name, f)}, data={"response_format": "verbose_json"},
                                 timeout=3600)
    response.raise_for_status()
    return response.json(), time.perf_counter() - started


async def with_streams(target: str, streams: int, url: str, mp3: Path) -> tuple[dict, float, dict | None]:
    """The file posted (beside `streams` real-time streams, running until it is done)."""
    if not streams:
        return (*await asyncio.to_thread(post, url, mp3), None)
    posting = asyncio.ensure_future(asyncio.to_thread(post, url, mp3))
    runs = []
    while not posting.done():
        runs.append(await run_streams(target, streams, 10.0, CHUNK_S, DELAY_S, None, 0))
    body, seconds = await posting
    return body, seconds, {"partial": np.concatenate([r["partial"] for r in runs]),
                           "errors": sum(r["errors"] + r["refused"] for r in runs)}


def ours(a, parallel: int, mp3: Path, texts: list[str], audio_s: float) -> list[str]:
    http = free_port()
    server, target = start_server(["--provider", "cpu", "--http-port", str(http), "--file-parallel-segments",
                                   str(parallel), *a.server_args])
    url = f"http://127.0.0.1:{http}/v1/audio/transcriptions"
    rows = []
    try:
        post(url, mp3.with_suffix(".warmup.flac"))
        if a.streams:
            quiet = asyncio.run(run_streams(target, a.streams, 10.0, CHUNK_S, DELAY_S, None, 0))
            rows.append(f"| {a.streams} real-time streams alone | | | | | partial p50/p95 "
                        f"{pct(quiet['partial'], 50)}/{pct(quiet['partial'], 95)} ms |")
        body, seconds, live = asyncio.run(with_streams(target, a.streams, url, mp3))
        wer = jiwer.wer(" ".join(texts), normalize(body["text"]))
        streams = (f"partial p50/p95 {pct(live['partial'], 50)}/{pct(live['partial'], 95)} ms, "
                   f"{live['errors']} errors" if live else "")
        rows.append(f"| ours, {parallel} segment(s) at once{', beside the streams' if live else ''} | {seconds:.1f} "
                    f"| {audio_s / seconds:.1f} | {wer:.1%} | {peak_rss_mb(server.pid):.0f} MB | {streams} |")
        print(rows[-1], flush=True)
        if a.one_by_one and parallel == a.parallel[0]:
            rows.append(one_by_one(target, a.clips, texts))
            print(rows[-1], flush=True)
        (a.work / f"ours_{parallel}.json").write_text(json.dumps(body))
    finally:
        server.terminate()
        server.wait(30)
    return rows


def one_by_one(target: str, clips: list[np.ndarray], texts: list[str]) -> str:
    hyps, started = [], time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        for clip in clips:
            config = asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.FLOAT32, sample_rate_hertz=RATE)
            response = stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio_content=clip.tobytes()),
                                      timeout=120)
            hyps.append(" ".join(r.alternatives[0].transcript for r in response.results))
    seconds = time.perf_counter() - started
    speech = sum(len(c) for c in clips) / RATE
    return (f"| ours, the same utterances one by one (Recognize) | {seconds:.1f} | {speech / seconds:.1f} "
            f"| {jiwer.wer(' '.join(texts), normalize(' '.join(hyps))):.1%} | | speech only |")


def whisper(mp3: Path, texts: list[str], audio_s: float) -> str:
    from faster_whisper import WhisperModel

    from models import sentences
    from models.whisper import source_files
    model = WhisperModel(str(source_files("tiny.en")[0].parent), device="cpu", compute_type="int8", cpu_threads=2)
    audio = read_audio(str(mp3), RATE)
    started = time.perf_counter()
    segments, _ = model.transcribe(audio, language="en", beam_size=5)
    text = " ".join(s.text for s in segments)
    seconds = time.perf_counter() - started
    wer = jiwer.wer(" ".join(texts), normalize(sentences.spell_numbers(text)))
    return (f"| faster-whisper tiny.en (int8, beam 5, 2 threads) | {seconds:.1f} | {audio_s / seconds:.1f} "
            f"| {wer:.1%} | | |")


def main() -> None:
    argv = sys.argv[1:]
    server_args = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(prog="python -m service.tools.long_file_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True, help="JSONL of utterances ({audio, text})")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--parallel", default="1,4", help="comma-separated --file-parallel-segments values to measure")
    p.add_argument("--streams", type=int, default=0, help="real-time streams beside the file (their latency)")
    p.add_argument("--no-one-by-one", dest="one_by_one", action="store_false")
    p.add_argument("--no-whisper", dest="whisper", action="store_false")
    p.add_argument("--work", type=Path, default=Path("/tmp/long_file_benchmark"))
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.server_args, a.parallel = server_args, [int(x) for x in a.parallel.split(",")]
    mp3, a.clips, texts = build(a.manifest, a.minutes, a.work)
    sf.write(mp3.with_suffix(".warmup.flac"), a.clips[0], RATE)
    audio_s = sf.info(mp3).duration
    print(f"{mp3}: {audio_s / 60:.1f} min, {mp3.stat().st_size / 1e6:.1f} MB, {len(texts)} utterances", flush=True)
    rows = ["| system | wall s | audio s per wall s | WER | server peak RSS | |", "|---|---|---|---|---|---|"]
    for parallel in a.parallel:
        rows += ours(a, parallel, mp3, texts, audio_s)
    if a.whisper:
        rows.append(whisper(mp3, texts, audio_s))
        print(rows[-1], flush=True)
    print(f"\n{audio_s / 60:.1f} minutes ({a.manifest.name}, {len(texts)} utterances, pauses 0.3-1 s), "
          f"on this machine:\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
