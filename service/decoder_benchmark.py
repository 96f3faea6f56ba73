"""Decoder benchmark: the beam search alone, on the same model outputs, as the service runs it.

    python -m service.decoder_benchmark [--model DIR] [--set NAME=MANIFEST ...] [--limit N] \\
        [--beam-widths 128,64,32] [--threads 1,2]

Computes each clip's log-probabilities once (default clips: the model directory's
canaries), then decodes them chunk by chunk as a stream is decoded: advance by one
model chunk, take the interim hypothesis and its stability, and finish with the
final n-best. Prints, per beam width, the CPU time per second of audio on one
thread, and the audio seconds decoded per wall-clock second by N threads each
decoding every clip (their scaling against one thread shows how much of the
decoder holds the GIL). A development tool: it reads manifests with the training
recipe's code, so it needs the training extra (`make test` installs it).
"""

import argparse
import threading
import time

import numpy as np

from models.corpus import read_audio, read_manifest, spread
from service.config import BUNDLED_MODEL
from service.decoder import CtcDecoder, DecodeOptions
from service.model_session import MAX_BEAM_WIDTH, ModelSession, ModelSpec
from service.recognizer import Recognizer


def decode_stream(decoder: CtcDecoder, logprobs: np.ndarray, opts: DecodeOptions, chunk: int) -> str:
    state = decoder.start(opts)
    for i in range(0, len(logprobs), chunk):
        decoder.advance(state, logprobs[i:i + chunk])
        decoder.partial(state)
        decoder.stability(state)
    return decoder.finish(state)[0].text


def wall_throughput(decoder: CtcDecoder, clips: list[np.ndarray], opts: DecodeOptions, chunk: int,
                    threads: int, audio_s: float) -> float:
    """Audio seconds decoded per wall second by `threads` threads, each decoding every clip."""
    workers = [threading.Thread(target=lambda: [decode_stream(decoder, c, opts, chunk) for c in clips])
               for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * audio_s / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(BUNDLED_MODEL), help="model directory (default: the bundled model)")
    p.add_argument("--set", action="append", metavar="NAME=MANIFEST",
                   help="clips to decode (default: the model directory's canaries)")
    p.add_argument("--limit", type=int, help="N of each set's clips, evenly spaced")
    p.add_argument("--beam-widths", default="128,64,32")
    p.add_argument("--threads", default="1,2")
    a = p.parse_args()
    widths, thread_counts = ([int(x) for x in s.split(",")] for s in (a.beam_widths, a.threads))
    if not all(1 < w <= MAX_BEAM_WIDTH for w in widths) or not all(n >= 1 for n in thread_counts):
        p.error(f"beam widths must be 2-{MAX_BEAM_WIDTH} and thread counts at least 1")
    spec = ModelSpec.load(a.model)
    recognizer = Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec))
    if not recognizer.decoder.has_lm:
        p.error(f"{a.model}: no language model: beam search would not run")
    manifests = [s.split("=", 1)[1] for s in a.set] if a.set else [spec.directory / "canaries" / "manifest.jsonl"]
    rows = [r for m in manifests for r in spread(read_manifest(m), a.limit)]
    clips = [recognizer.utterance_logprobs(read_audio(r["audio"], spec.features.sample_rate)) for r in rows]
    audio_s = sum(len(c) for c in clips) * spec.frame_seconds
    chunk = spec.chunk_frames // spec.subsampling_factor
    print(f"model {spec.name} {spec.version}: {len(clips)} clips, {audio_s:.1f} s of audio, "
          f"decoded in chunks of {chunk} output frames ({chunk * spec.frame_seconds * 1000:.0f} ms), "
          f"LM weight {spec.lm_weight}, word bonus {spec.word_bonus}\n")
    print("| beam | CPU ms per audio s (1 thread) | " + " | ".join(f"audio s per wall s, {n} thread(s)"
                                                          for n in thread_counts) + " |")
    print("| --- " * (2 + len(thread_counts)) + "|")
    for width in widths:
        opts = DecodeOptions(beam_width=width, lm_weight=spec.lm_weight, word_bonus=spec.word_bonus)
        decode_stream(recognizer.decoder, clips[0], opts, chunk)  # warm: the LM's pages, the decoder's caches
        started = time.process_time()
        for c in clips:
            decode_stream(recognizer.decoder, c, opts, chunk)
        cpu_ms = 1000 * (time.process_time() - started) / audio_s
        rates = [wall_throughput(recognizer.decoder, clips, opts, chunk, n, audio_s) for n in thread_counts]
        cells = [f"{r:.0f}" + (f" ({r / rates[0]:.2f}x)" if i else "") for i, r in enumerate(rates)]
        print(f"| {width} | {cpu_ms:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
