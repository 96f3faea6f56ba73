"""Synthesize a speech corpus with espeak-ng and flite into a JSONL manifest.

    python -m models.corpus --out data/corpus --train-utterances 3000

Each manifest line: {"audio": path, "text": ..., "duration": s, "source": engine,
"voice": name}. Training uses espeak-ng variants and flite kal16/awb/rms on
training sentences; `valid_seen` holds held-out sentences in training voices,
`valid_unseen_voice` held-out sentences in a voice never trained on (flite slt).
"""

import argparse
import json
import random
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from models import sentences

SAMPLE_RATE = 16000
ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "klatt", "klatt2", "klatt3", "klatt4", "adam", "alex", "andy", "annie",
                   "benjamin", "david", "ed", "edward", "john", "linda", "max", "michael",
                   "paul", "quincy", "robert", "steph", "travis", "victor", "zac"]
FLITE_TRAIN_VOICES = ["kal16", "awb", "rms"]
FLITE_UNSEEN_VOICES = ["slt"]


@dataclass(frozen=True)
class Job:
    path: str
    text: str
    source: str
    voice: str
    speed: int = 0
    pitch: int = 0


def synthesize(job: Job) -> np.ndarray:
    """Float32 mono samples at 16 kHz."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        if job.source == "espeak-ng":
            cmd = ["espeak-ng", "-v", job.voice, "-s", str(job.speed), "-p", str(job.pitch),
                   "-w", tmp.name, job.text]
        else:
            cmd = ["flite", "-voice", job.voice, "-t", job.text, "-o", tmp.name]
        subprocess.run(cmd, check=True, capture_output=True)
        audio, rate = sf.read(tmp.name, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    return audio.astype(np.float32)


def _render(job: Job) -> dict:
    audio = synthesize(job)
    sf.write(job.path, audio, SAMPLE_RATE, format="FLAC")
    return {"audio": job.path, "text": job.text, "duration": round(len(audio) / SAMPLE_RATE, 3),
            "source": job.source, "voice": job.voice if not job.speed else
            f"{job.voice}/s{job.speed}/p{job.pitch}"}


def _jobs(out: Path, name: str, texts: list[str], voices: list[tuple[str, str]],
          rng: random.Random) -> list[Job]:
    audio_dir = out / "audio" / name
    audio_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, text in enumerate(texts):
        source, voice = rng.choice(voices)
        speed, pitch = (rng.randint(130, 210), rng.randint(20, 80)) if source == "espeak-ng" else (0, 0)
        jobs.append(Job(str(audio_dir / f"{i:06d}.flac"), text, source, voice, speed, pitch))
    return jobs


def build(out: Path, train_utterances: int, valid_utterances: int, seed: int, workers: int) -> None:
    rng = random.Random(seed)
    espeak = [("espeak-ng", f"{a}+{v}") for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    flite_train = [("flite", v) for v in FLITE_TRAIN_VOICES]
    # Weight flite up: three voices against hundreds of espeak-ng variants.
    train_voices = espeak + flite_train * (len(espeak) // 6)
    splits = {
        "train": _jobs(out, "train", sentences.generate(train_utterances, seed, held_out=False),
                       train_voices, rng),
        "valid_seen": _jobs(out, "valid_seen", sentences.generate(valid_utterances, seed + 1, True),
                            train_voices, rng),
        "valid_unseen_voice": _jobs(out, "valid_unseen_voice",
                                    sentences.generate(valid_utterances, seed + 2, True),
                                    [("flite", v) for v in FLITE_UNSEEN_VOICES], rng),
    }
    with ProcessPoolExecutor(workers) as pool:
        for name, jobs in splits.items():
            rows = list(tqdm(pool.map(_render, jobs, chunksize=16), total=len(jobs), desc=name))
            with open(out / f"{name}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            hours = sum(r["duration"] for r in rows) / 3600
            print(f"{name}: {len(rows)} utterances, {hours:.2f} h -> {out / name}.jsonl")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/corpus"))
    p.add_argument("--train-utterances", type=int, default=3000)
    p.add_argument("--valid-utterances", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    build(a.out, a.train_utterances, a.valid_utterances, a.seed, a.workers)


if __name__ == "__main__":
    main()
