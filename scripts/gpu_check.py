"""CUDA execution provider check, for a machine with a GPU and onnxruntime-gpu.

    python -m scripts.gpu_check [--model models/pretrained/default]

Prints CUDA vs CPU log-prob parity over a chunked stream with carried state,
and how many real-time streams the model step alone could serve on this GPU
(batched chunk calls; decoding and networking not counted).
"""

import argparse
import time

import numpy as np
import onnxruntime as ort

from engine.model.directory import ModelSpec
from engine.model.session import ModelSession


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="models/pretrained/default")
    a = p.parse_args()
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* Python packages, where installed
    print("onnxruntime", ort.__version__, ort.get_available_providers())
    spec = ModelSpec.load(a.model)
    cpu, gpu = ModelSession(spec, "cpu"), ModelSession(spec, "cuda")
    print("providers:", cpu.provider, gpu.provider)
    rng = np.random.default_rng(0)
    feats = rng.normal(-4, 3, (spec.chunk_frames * 50, spec.features.n_mels)).astype(np.float32)
    worst, s_cpu, s_gpu = 0.0, cpu.initial_state(), gpu.initial_state()
    for i in range(0, len(feats), spec.chunk_frames):
        out_cpu, s_cpu = cpu.step(feats[i:i + spec.chunk_frames], s_cpu)
        out_gpu, s_gpu = gpu.step(feats[i:i + spec.chunk_frames], s_gpu)
        worst = max(worst, float(np.abs(out_cpu - out_gpu).max()))
    print(f"parity CUDA vs CPU over 50 chunks with carried state: max |diff| = {worst:.2e}")
    chunk_s = spec.chunk_frames * spec.features.hop_length / spec.features.sample_rate
    print("| batch | ms per batched chunk call | real-time streams (model only) |\n| --- | --- | --- |")
    for batch in (1, 8, 32, 128, 512, 1024):
        chunks = [feats[:spec.chunk_frames]] * batch
        states = [gpu.initial_state()] * batch
        for _ in range(3):
            gpu.step_batch(chunks, states)
        runs, started = 20, time.perf_counter()
        for _ in range(runs):
            gpu.step_batch(chunks, states)
        per_call = (time.perf_counter() - started) / runs
        print(f"| {batch} | {1000 * per_call:.2f} | {batch * chunk_s / per_call:.0f} |")


if __name__ == "__main__":
    main()
