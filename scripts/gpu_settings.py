"""CUDA execution provider settings compared on the bundled model, for a machine with
a GPU and onnxruntime-gpu (CUDA and cuDNN libraries on LD_LIBRARY_PATH).

    python -m scripts.gpu_settings [--model models/pretrained/default]

For the CPU provider and the CUDA provider under each cuDNN convolution search
setting, prints: the first call at each new batch size 1-8 (the search runs
then; the first CUDA session also pays CUDA's start-up), and wall / process CPU
time per call once warm: batch 1, batch 1 from 4 threads at once, batch 32.
"""

import argparse
import os
import threading
import time

import numpy as np
import onnxruntime as ort

from engine.model.directory import ModelSpec
from engine.model.session import CPU, CUDA, CUDA_OPTIONS, session_options


def feeds(spec: ModelSpec, batch: int, rng: np.random.Generator) -> dict:
    f = {"audio_signal": rng.normal(-4, 3, (batch, spec.features.n_mels, spec.chunk_frames)).astype(np.float32),
         "length": np.full(batch, spec.chunk_frames, np.int64)}
    for s in spec.states:
        shape = list(s.shape)
        shape[s.batch_axis] = batch
        f[s.input] = np.zeros(shape, np.float32)
    return f


def timed(run, calls: int) -> tuple[float, float]:
    """Wall and process CPU milliseconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return 1000 * (time.perf_counter() - wall) / calls, 1000 * (time.process_time() - cpu) / calls


def measure(spec: ModelSpec, name: str, providers: list) -> None:
    session = ort.InferenceSession(str(spec.directory / "model.onnx"), session_options(1), providers=providers)
    rng = np.random.default_rng(0)
    first = [timed(lambda b=b: session.run(None, feeds(spec, b, rng)), 1)[0] for b in range(1, 9)]
    one, many = feeds(spec, 1, rng), feeds(spec, 32, rng)
    for _ in range(20):
        session.run(None, one)
        session.run(None, many)

    def from_threads() -> None:
        threads = [threading.Thread(target=lambda: [session.run(None, one) for _ in range(100)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    single = timed(lambda: [session.run(None, one) for _ in range(300)], 300)
    shared = timed(from_threads, 400)
    batched = timed(lambda: [session.run(None, many) for _ in range(50)], 50)
    print(f"| {name} | {session.get_providers()[0]} | {sum(first):.0f} ({max(first):.0f}) | "
          + " | ".join(f"{w:.2f} / {c:.2f}" for w, c in (single, shared, batched)) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/pretrained/default")
    spec = ModelSpec.load(p.parse_args().model)
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} CPUs")
    print("| setting | provider | first calls, batch 1-8: sum (max) ms | batch 1: wall / CPU ms per call | "
          "4 threads, batch 1 | batch 32 |\n| --- | --- | --- | --- | --- | --- |")
    measure(spec, "CPU", [CPU])
    for search in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
        measure(spec, f"CUDA, conv search {search}", [(CUDA, {**CUDA_OPTIONS, "cudnn_conv_algo_search": search}), CPU])


if __name__ == "__main__":
    main()
