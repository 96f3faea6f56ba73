"""Speed of a model directory under ONNX Runtime on one CPU core.

    python -m models.benchmark --model models/pretrained/default [--seconds 60]

Feeds synthetic audio through the served front-end and model, chunk by chunk
as a stream would (one model call per chunk), and prints how many times faster
than real time it ran, for the front-end + model and for the model alone.
"""

import argparse
import time

import numpy as np

from service.features import LogMel, StreamingFeatures
from service.model_session import ModelSession, ModelSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--seconds", type=float, default=60.0, help="audio to process")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    a = p.parse_args()
    spec = ModelSpec.load(a.model)
    session = ModelSession(spec, "cpu", a.threads)
    rate = spec.features.sample_rate
    audio = (np.random.default_rng(0).standard_normal(int(a.seconds * rate)) * 0.05).astype(np.float32)
    chunk = spec.chunk_frames * spec.features.hop_length
    for _ in range(20):  # warm-up
        session.step(np.zeros((spec.chunk_frames, spec.features.n_mels), np.float32), session.initial_state())
    features, state, model_time = StreamingFeatures(LogMel(spec.features)), session.initial_state(), 0.0
    pending = np.zeros((0, spec.features.n_mels), np.float32)
    started = time.perf_counter()
    for i in range(0, len(audio), chunk):
        pending = np.concatenate([pending, features.accept(audio[i:i + chunk])])
        while len(pending) >= spec.chunk_frames:
            t = time.perf_counter()
            _, state = session.step(pending[: spec.chunk_frames], state)
            model_time += time.perf_counter() - t
            pending = pending[spec.chunk_frames:]
    total = time.perf_counter() - started
    chunk_ms = 1000 * spec.chunk_frames * spec.features.hop_length / rate
    calls = len(audio) // chunk
    print(f"model {spec.name} {spec.version}: {spec.parameters:,} parameters, {a.threads} thread(s), "
          f"{chunk_ms:.0f} ms chunks, {a.seconds:.0f} s of audio")
    print(f"front-end + model: {a.seconds / total:.0f}x real time ({1000 * total / calls:.2f} ms per chunk)")
    print(f"model alone:       {a.seconds / model_time:.0f}x real time ({1000 * model_time / calls:.2f} ms per chunk)")


if __name__ == "__main__":
    main()
