"""Speed of a model directory under ONNX Runtime on one CPU core, or of training steps.

    python -m models.benchmark --model models/pretrained/default [--seconds 60]
    python -m models.benchmark --train-config models/configs/default.toml [--steps 5]

With --model it feeds synthetic audio through the served front-end and model,
chunk by chunk as a stream would (one model call per chunk), and prints how
many times faster than real time it ran, for the front-end + model and for the
model alone. With --train-config it times training steps of that config's
model on a synthetic batch of its `batch_frames` (5 s utterances), with the
forward pass in float32 and in bfloat16 (the config's `bf16` setting).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from engine.features import StreamingFeatures, frontend
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from models import architectures
from models.model import TOKENS, num_parameters
from models.train import load_config, train_step, typed_settings

UTTERANCE_FRAMES, CHARS_PER_SECOND = 500, 14


def train_speed(config: Path, steps: int) -> None:
    cfg = load_config(config)
    _, model_cfg = typed_settings(cfg)
    threads = cfg.get("threads", 2)  # as models.train runs it
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = max(1, cfg["batch_frames"] // UTTERANCE_FRAMES)
    features = model_cfg.features
    utterance_s = UTTERANCE_FRAMES * features.hop_length / features.sample_rate
    chars = round(CHARS_PER_SECOND * utterance_s)
    data = (torch.randn(batch, features.n_mels, UTTERANCE_FRAMES), torch.full((batch,), UTTERANCE_FRAMES),
            torch.randint(1, len(TOKENS), (batch * chars,)), torch.full((batch,), chars))
    model = architectures.build(model_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    print(f"{config}: {num_parameters(model):,} parameters, batches of {batch} x {utterance_s:g} s, "
          f"{threads} thread(s)")
    for bf16 in (False, True):
        train_step(model, opt, ctc, data, bf16)  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            train_step(model, opt, ctc, data, bf16)
        per_step = (time.perf_counter() - started) / steps
        print(f"forward in {'bfloat16' if bf16 else 'float32 '}: {per_step:.3f} s per step, "
              f"{batch * utterance_s / per_step:.0f} s of audio per second")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a model directory (ONNX)")
    which.add_argument("--train-config", type=Path, help="a training config (TOML)")
    p.add_argument("--seconds", type=float, default=60.0, help="audio to process")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--steps", type=int, default=5, help="training steps to time, each way")
    a = p.parse_args()
    if a.train_config:
        train_speed(a.train_config, a.steps)
        return
    spec = ModelSpec.load(a.model)
    session = ModelSession(spec, "cpu", a.threads)
    rate = spec.features.sample_rate
    audio = (np.random.default_rng(0).standard_normal(int(a.seconds * rate)) * 0.05).astype(np.float32)
    chunk = spec.chunk_frames * spec.features.hop_length
    for _ in range(20):  # warm-up
        session.step(np.zeros((spec.chunk_frames, spec.features.width), np.float32), session.initial_state())
    features, state, model_time = StreamingFeatures(frontend(spec.features)), session.initial_state(), 0.0
    pending = np.zeros((0, spec.features.width), np.float32)
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
