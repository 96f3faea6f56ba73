"""Decoder benchmark: the beam search alone, on the same model outputs, as the service runs it.

    python -m service.tools.decoder_benchmark [--model DIR] [--set NAME=MANIFEST ...] [--limit N] \\
        [--beam-widths 128,32] [--threads 1,2] [--decoder python,native] [--repeat 3] \\
        [--save-logprobs FILE.npz | --logprobs FILE.npz]

Computes each clip's log-probabilities once (default clips: the model directory's
canaries; --logprobs: ones recorded with --save-logprobs, such as the parity test's
tests/data/canary_logprobs.npz), frees the model, then decodes them as the server
decodes streams: 32 at a time advanced together chunk by chunk (one decoder call
per model batch), an interim result per stream and chunk (text and stability),
then the final n-best. Prints, per beam width and decoder engine, the CPU time per
second of audio with one decoding thread (the least of --repeat runs), how many
times less than the first engine listed that is, the audio seconds decoded per
wall-clock second with N decoding threads (the native engine decodes a batch's
streams N at a time; the Python one, under the GIL, one after another), and
whether every engine's interim and final results were the same. A development
tool: it reads manifests with the training recipe's code, so it needs the training
extra (`make test` installs it).
"""

import argparse
import dataclasses
import gc
import math
import time

import numpy as np

from engine.decoder.ctc import CtcDecoder, DecodeOptions
from engine.manifest import read_audio, read_manifest, spread
from engine.model.directory import MAX_BEAM_WIDTH, ModelSpec
from engine.model.session import ModelSession
from engine.recognizer import Recognizer
from service.config import BUNDLED_MODEL

WALL_SECONDS = 2.0  # each thread-scaling run decodes at least this long
BATCH = 32  # streams decoded together, as the server's default --max-batch


def load_logprobs(path) -> list[np.ndarray]:
    """Clips recorded with --save-logprobs, in order."""
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files)]


def decode_batches(decoder: CtcDecoder, clips: list[np.ndarray], opts: DecodeOptions, chunk: int) -> list:
    """Each clip's interim texts and final n-best texts, the clips decoded as the server decodes
    its streams: up to BATCH at once, advanced together chunk by chunk (one `advance_many` per
    model batch), an interim result per stream and chunk, then the finals."""
    out = []
    for first in range(0, len(clips), BATCH):
        group = clips[first:first + BATCH]
        states, texts = [decoder.start(opts) for _ in group], [[] for _ in group]
        for i in range(0, max(len(c) for c in group), chunk):
            live = [j for j, c in enumerate(group) if i < len(c)]
            decoder.advance_many([states[j] for j in live], [group[j][i:i + chunk] for j in live])
            for j in live:
                texts[j].append(decoder.interim(states[j])[0].text)
        out += [t + [h.text for h in decoder.finish(st)] for t, st in zip(texts, states)]
    return out


def wall_throughput(decoder: CtcDecoder, clips: list[np.ndarray], opts: DecodeOptions, chunk: int,
                    threads: int, audio_s: float, rounds: int) -> float:
    """Audio seconds decoded per wall second with `threads` decoding threads, every clip `rounds` times."""
    decoder.threads = threads
    started = time.perf_counter()
    for _ in range(rounds):
        decode_batches(decoder, clips, opts, chunk)
    rate = rounds * audio_s / (time.perf_counter() - started)
    decoder.threads = 1
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(BUNDLED_MODEL), help="model directory (default: the bundled model)")
    p.add_argument("--set", action="append", metavar="NAME=MANIFEST",
                   help="clips to decode (default: the model directory's canaries)")
    p.add_argument("--limit", type=int, help="N of each set's clips, evenly spaced")
    p.add_argument("--beam-widths", default="128,32")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--decoder", default="python,native", help="engines to compare, the reference first")
    p.add_argument("--blank-skip", type=float, help="skip frames whose blank probability reaches this "
                   "(default: the model directory's decoder.blank_skip; 0: off)")
    p.add_argument("--save-logprobs", metavar="FILE.npz", help="also write the clips' log-probabilities")
    p.add_argument("--logprobs", metavar="FILE.npz", help="decode log-probabilities recorded with --save-logprobs")
    p.add_argument("--repeat", type=int, default=3, help="CPU time is the least of this many runs (a shared "
                   "machine's noise only ever adds time)")
    a = p.parse_args()
    widths, thread_counts = ([int(x) for x in s.split(",")] for s in (a.beam_widths, a.threads))
    engines = a.decoder.split(",")
    if not all(1 < w <= MAX_BEAM_WIDTH for w in widths) or not all(n >= 1 for n in thread_counts):
        p.error(f"beam widths must be 2-{MAX_BEAM_WIDTH} and thread counts at least 1")
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    if not set(engines) <= {"python", "native"}:
        p.error("--decoder takes python and/or native")
    spec = ModelSpec.load(a.model)
    if a.blank_skip is not None:
        if not 0 <= a.blank_skip < 1:
            p.error("--blank-skip is a probability below 1 (0: off)")
        spec = dataclasses.replace(spec, blank_skip=a.blank_skip or None)
    decoders = [CtcDecoder(spec, e) for e in engines]
    if not decoders[0].has_lm:
        p.error(f"{a.model}: no language model: beam search would not run")
    manifests = [s.split("=", 1)[1] for s in a.set] if a.set else [spec.directory / "canaries" / "manifest.jsonl"]
    if a.logprobs:
        clips = load_logprobs(a.logprobs)
    else:
        rows = [r for m in manifests for r in spread(read_manifest(m), a.limit)]
        recognizer = Recognizer(ModelSession(spec, "cpu"), decoders[0])
        clips = [recognizer.utterance_logprobs(read_audio(r["audio"], spec.features.sample_rate)) for r in rows]
        del recognizer  # ONNX Runtime's idle threads would otherwise count as the decoder's CPU time
        gc.collect()
    if a.save_logprobs:
        np.savez_compressed(a.save_logprobs, **{f"clip{i:03d}": c for i, c in enumerate(clips)})
        print(f"wrote {len(clips)} clips' log-probabilities to {a.save_logprobs}")
    audio_s = sum(len(c) for c in clips) * spec.frame_seconds
    chunk = spec.chunk_frames // spec.subsampling_factor
    print(f"model {spec.name} {spec.version}: {len(clips)} clips, {audio_s:.1f} s of audio, "
          f"decoded in chunks of {chunk} output frames ({chunk * spec.frame_seconds * 1000:.0f} ms), "
          f"LM weight {spec.lm_weight}, word bonus {spec.word_bonus}, blank frames skipped from "
          f"{spec.blank_skip or 'never'}\n")
    print("| beam | decoder | CPU ms per audio s (1 thread) | " + " | ".join(
        f"audio s per wall s, {n} thread(s)" for n in thread_counts) + " | same results |")
    print("| --- " * (4 + len(thread_counts)) + "|")
    for width in widths:
        opts = DecodeOptions(beam_width=width, lm_weight=spec.lm_weight, word_bonus=spec.word_bonus)
        reference, first_ms = None, None
        for decoder in decoders:
            decode_batches(decoder, clips[:1], opts, chunk)  # warm: the LM's pages, the decoder's caches
            times = []
            for _ in range(a.repeat):
                started = time.process_time()
                results = decode_batches(decoder, clips, opts, chunk)
                times.append(time.process_time() - started)
            cpu_ms = 1000 * min(times) / audio_s
            reference, first_ms = reference or results, first_ms or cpu_ms
            rounds = max(1, math.ceil(WALL_SECONDS / (min(times) or 1e-3)))  # long enough to outlast thread starts
            rates = [wall_throughput(decoder, clips, opts, chunk, n, audio_s, rounds) for n in thread_counts]
            cells = [f"{r:.0f}" + (f" ({r / rates[0]:.2f}x)" if i else "") for i, r in enumerate(rates)]
            ratio = f" ({first_ms / cpu_ms:.1f}x less)" if decoder is not decoders[0] else ""
            same = "reference" if decoder is decoders[0] else "yes" if results == reference else "NO"
            print(f"| {width} | {decoder.engine.name} | {cpu_ms:.2f}{ratio} | " + " | ".join(cells) + f" | {same} |")


if __name__ == "__main__":
    main()
