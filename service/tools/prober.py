"""Send a labelled canary set through a running server: the prober of running accuracy.

    python -m service.tools.prober [--target HOST:PORT] [--canaries DIR] [--once] [--interval 60] [--max-wer 0.5]

Each round sends every clip of the set (default: the bundled model's
canaries), alternating unary Recognize and StreamingRecognize (in pairs) at real-time
pace, each labelled with its reference and set, so the server's canary
metrics move. It prints each clip's score and the round's WER/CER. With
--once it runs one round and exits non-zero if a request failed or the
round's WER is above --max-wer, which suits a Kubernetes CronJob; without it,
it runs a round every --interval seconds, as a sidecar.

With --stage [NAME=]DIR it drives a canary-gated promotion: it asks the server
to stage DIR as the candidate for model NAME (Admin.ReloadModel, stage=true)
and sends canary rounds until the server decides, prints the decision with
both models' WER per set, and exits 0 if the candidate was promoted, 1 if not.
"""

import argparse
import itertools
import sys
import time
from pathlib import Path

import grpc
import soundfile as sf

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.manifest import read_manifest
from service.client import add_connection_args, call_metadata, open_channel, stream_requests
from service.config import BUNDLED_MODEL

Encoding = asr_pb2.RecognitionConfig.AudioEncoding


def load_set(directory: Path) -> list[dict]:
    """The clips, their sets taken in turn, so that every set is heard from the start of a round
    (a staged candidate is decided once each set heard has enough canaries)."""
    by_set: dict[str, list[dict]] = {}
    for r in read_manifest(directory / "manifest.jsonl"):
        by_set.setdefault(r.get("set", ""), []).append({**r, "audio": Path(r["audio"])})
    turns = itertools.zip_longest(*by_set.values())
    return [clip for turn in turns for clip in turn if clip is not None]


def probe(stub, clip: dict, streaming: bool, realtime: bool, timeout: float,
          metadata=None, model: str = "") -> tuple[str, asr_pb2.CanaryScore]:
    """One canary request; returns the transcript and the server's score."""
    config = asr_pb2.RecognitionConfig(model=model, canary=asr_pb2.CanaryLabel(reference=clip["text"],
                                                                               set=clip.get("set", "")))
    if not streaming:
        response = stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio_content=clip["audio"].read_bytes()),
                                  timeout=timeout, metadata=metadata)
        return response.results[0].alternatives[0].transcript, response.canary_score
    audio, rate = sf.read(clip["audio"], dtype="int16", always_2d=True)
    config.encoding, config.sample_rate_hertz, config.audio_channel_count = Encoding.LINEAR16, rate, audio.shape[1]
    finals, score = [], None
    for response in stub.StreamingRecognize(stream_requests(config, audio.tobytes(), rate, 100, realtime),
                                            timeout=timeout, metadata=metadata):
        finals += [r.alternatives[0].transcript for r in response.results if r.is_final and r.alternatives]
        if response.HasField("canary_score"):
            score = response.canary_score
    if score is None:
        raise RuntimeError("the stream ended without a canary score")
    return " ".join(t for t in finals if t), score


def run_round(stub, clips: list[dict], realtime: bool, timeout: float, metadata=None, model: str = "",
              until=lambda: False) -> tuple[int, int, int, int, int]:
    """Returns (failures, word errors, reference words, char errors, reference chars); stops early
    once `until()`."""
    totals = [0, 0, 0, 0, 0]
    for i, clip in enumerate(clips):
        if until():
            break
        streaming = i // 2 % 2 == 1  # in pairs, so that two interleaved sets both go both ways
        mode = "stream" if streaming else "unary"
        try:
            _, s = probe(stub, clip, streaming, realtime, timeout, metadata, model)
        except (grpc.RpcError, RuntimeError) as e:
            code = e.code().name if isinstance(e, grpc.RpcError) else str(e)
            print(f"FAIL {mode:6s} {clip['audio'].name}: {code}", flush=True)
            totals[0] += 1
            continue
        for k, v in enumerate((s.word_errors, s.reference_words, s.char_errors, s.reference_chars), start=1):
            totals[k] += v
        print(f"{mode:6s} [{s.set}] {clip['audio'].name}: WER {s.wer:.3f} CER {s.cer:.3f}", flush=True)
    return tuple(totals)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m service.tools.prober", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    p.add_argument("--canaries", type=Path, default=BUNDLED_MODEL / "canaries",
                   help="folder with manifest.jsonl (audio, text, set) and the clips")
    p.add_argument("--once", action="store_true", help="one round, then exit (non-zero on failure)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between round starts")
    p.add_argument("--max-wer", type=float, default=0.5, help="with --once: fail above this round WER")
    p.add_argument("--fast", action="store_true", help="stream as fast as possible instead of real time")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--model", default="", help="the served model to probe (default: the server's default)")
    p.add_argument("--stage", metavar="[NAME=]DIR", help="stage DIR (a path on the server) as the candidate for "
                   "model NAME (default: --model) and send canaries until the server decides")
    p.add_argument("--stage-timeout", type=float, default=4000.0,
                   help="seconds to wait for the decision (the server's --promotion-timeout-seconds decides first)")
    a = p.parse_args()
    if not (a.canaries / "manifest.jsonl").is_file():
        p.error(f"--canaries {a.canaries}: no manifest.jsonl")
    clips = load_set(a.canaries)
    with open_channel(a) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        if a.stage:
            return promote(channel, stub, clips, a)
        while True:
            started = time.monotonic()
            failures, we, rw, ce, rc = run_round(stub, clips, not a.fast, a.timeout, call_metadata(a))
            wer, cer = we / max(rw, 1), ce / max(rc, 1)
            print(f"round: {len(clips)} canaries, {failures} failed, WER {wer:.3f}, CER {cer:.3f}", flush=True)
            if a.once:
                return 1 if failures or wer > a.max_wer else 0
            time.sleep(max(0.0, started + a.interval - time.monotonic()))


def promote(channel, stub, clips: list[dict], a) -> int:
    """Stages the candidate, sends canary rounds until the server's decision, prints it."""
    name, _, directory = a.stage.rpartition("=")
    name = name or a.model
    request = asr_pb2.ReloadModelRequest(name=name, directory=directory, stage=True)
    decision = asr_pb2_grpc.AdminStub(channel).ReloadModel.future(request, timeout=a.stage_timeout,
                                                                  metadata=call_metadata(a))
    rounds = 0
    while not decision.done():
        run_round(stub, clips, not a.fast, a.timeout, call_metadata(a), name, until=decision.done)
        rounds += 1
    try:
        response = decision.result()
    except grpc.RpcError as e:
        print(f"staging {directory} failed: {e.code().name}: {e.details()}", flush=True)
        return 1
    for s in response.sets:
        print(f"set {s.set}: {s.canaries} canaries, candidate WER {s.candidate_wer:.3f}, "
              f"serving WER {s.serving_wer:.3f}", flush=True)
    print(f"{response.result} after {rounds} round(s): {response.message}", flush=True)
    return 0 if response.result == "promoted" else 1


if __name__ == "__main__":
    sys.exit(main())
