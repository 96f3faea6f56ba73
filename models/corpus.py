"""Build the training corpus: synthesized speech from many voices, plus FSDD read in place.

    python -m models.corpus --out data/corpus [--train-utterances 16000] [--fsdd ../shared/data/fsdd]

Writes JSONL manifests, one line per utterance: {"audio", "text", "duration",
"source", "voice"} (`audio` relative to the manifest's folder, or absolute):

- train.jsonl: training-side sentences in espeak-ng voices (hundreds of random
  variants: formants, pitch, breathiness, roughness, flutter, tone, both
  synthesizers, eight English accents, speed and word gaps) and flite voices
  kal, kal16, awb, rms;
- train_kokoro.jsonl: training-side sentences spoken by Kokoro-82M, a neural
  engine, in random blends of its five natural voices (models/kokoro.py);
- train_kokoro_far.jsonl: the same engine in blends pushed past its five styles
  (voices outside their mixes; only with --kokoro-far-utterances; an experiment,
  models/configs/kokoro_far_experiment.toml);
- train_piper.jsonl: training-side sentences spoken by Piper's en_US "joe", a
  neural voice of a native speaker, at random pace and variability (models/piper.py);
- train_more_engines.jsonl: training-side sentences in three more engines from Debian's
  contrib/non-free sections, at random pace and pitch: SVOX Pico (en-US, en-GB), RHVoice (alan,
  bdl, clb: statistical parametric voices of CMU ARCTIC speakers) and MBROLA diphone voices
  (us1, us2, us3, en1, driven by espeak-ng) (only with --more-engines-utterances; an
  experiment, models/configs/more_engines_experiment.toml);
- train_english.jsonl: plain English sentences only (the training side of the
  fortune files), each spoken once, in the espeak-ng and flite voices of
  train.jsonl: train.jsonl hears only a third of them, and spelling open
  English is what the models get most wrong (only with --english-utterances;
  an experiment, models/configs/english_experiment.toml);
- valid_seen.jsonl: held-out sentences in the espeak-ng and flite voices;
- valid_unseen_family.jsonl: held-out sentences in festival (ked diphone,
  slt HTS), an engine never trained on;
- train_fsdd.jsonl / valid_fsdd.jsonl: FSDD recordings, referenced in place
  (never copied); takes 0-4 of each digit and speaker are held out.

Augmentation (noise, reverberation, telephone band, speed, VTLP, SpecAugment)
happens when training computes features, so it applies to any manifest.
A manifest that already exists is kept, so a rerun only builds what is missing;
a rerun with a larger --kokoro-utterances adds the difference to train_kokoro.jsonl,
spoken by --kokoro-speakers new blends.
"""

import argparse
import json
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from engine import manifest
from models import kokoro, piper, sentences

SAMPLE_RATE = 16000
ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-us-nyc"]
ESPEAK_STOCK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
                         "klatt2", "klatt3", "klatt4", "adam", "andy", "annie", "benjamin", "david", "ed",
                         "edward", "john", "linda", "max", "michael", "paul", "quincy", "robert", "steph",
                         "travis", "victor", "zac"]
FLITE_TRAIN_VOICES = ["kal", "kal16", "awb", "rms"]
FESTIVAL_UNSEEN_VOICES = ["ked_diphone", "cmu_us_slt_arctic_hts"]
# Not RHVoice's slt: festival's held-out slt HTS is the same speaker; evgeniy-eng and lyubov are CC BY-NC-ND.
MORE_ENGINE_VOICES = ([("pico", v) for v in ["en-US", "en-GB"]] + [("rhvoice", v) for v in ["alan", "bdl", "clb"]]
                      + [("mbrola", v) for v in ["us1", "us2", "us3", "en1"]])
MORE_ENGINES = {source for source, _ in MORE_ENGINE_VOICES}
KOKORO_FAR_REACH = (0.5, 1.0)  # how far past the five styles: new voices, still intelligible speech (model card)
DIGITS = sentences.DIGITS


@dataclass(frozen=True)
class Job:
    path: str
    text: str
    source: str  # espeak-ng | flite | festival | kokoro | piper | pico | rhvoice | mbrola
    voice: str
    espeak_path: str = ""
    speed: int = 175  # espeak-ng: words per minute; others: percent of the voice's pace
    pitch: int = 50  # espeak-ng: 0-99; pico, rhvoice, mbrola: percent of the voice's pitch
    word_gap: int = 0
    kokoro_model: str = ""
    mix: tuple[float, ...] = ()  # kokoro: weight of each of kokoro.VOICES
    accent: str = ""  # kokoro: espeak-ng voice that phonemizes the text
    noise: tuple[float, float] = (0.667, 0.8)  # piper: noise_scale (voice), noise_w (timing)

    @property
    def voice_label(self) -> str:
        if self.source == "kokoro":
            return f"{self.voice}/{self.accent}/s{self.speed}"
        if self.source == "piper":
            return f"{self.voice}/s{self.speed}/n{self.noise[0]:.2f}/w{self.noise[1]:.2f}"
        if self.source == "espeak-ng":
            return f"{self.voice}/s{self.speed}/p{self.pitch}/g{self.word_gap}"
        if self.source in MORE_ENGINES:
            return f"{self.voice}/s{self.speed}/p{self.pitch}"
        return self.voice


def random_espeak_variant(rng: random.Random, name: str) -> str:
    """An espeak-ng voice variant file: a random vocal tract, voice source and prosody."""
    low = rng.uniform(60, 210)
    tract = rng.uniform(0.85, 1.2)  # formant frequency scale: a shorter or longer vocal tract
    lines = ["language variant", f"name {name}", f"pitch {low:.0f} {low + rng.uniform(15, 110):.0f}"]
    for k in range(9):
        freq = tract * 100 * rng.uniform(0.95, 1.05)
        lines.append(f"formant {k} {freq:.0f} {rng.uniform(70, 130):.0f} {rng.uniform(70, 160):.0f}")
    if rng.random() < 0.4:
        lines.append("breath " + " ".join(str(rng.randint(0, 40)) for _ in range(8)))
        lines.append(f"breathw {rng.randint(30, 150)} {rng.randint(30, 150)} {rng.randint(30, 150)}")
    if rng.random() < 0.5:
        lines.append(f"flutter {rng.randint(0, 40)}")
    if rng.random() < 0.3:
        lines.append(f"roughness {rng.randint(0, 4)}")
    if rng.random() < 0.5:
        lines.append(f"tone {rng.randint(300, 700)} {rng.randint(100, 250)} {rng.randint(900, 1500)} "
                     f"{rng.randint(80, 200)} {rng.randint(1800, 2600)} {rng.randint(60, 160)}")
    if rng.random() < 0.4:
        lines.append(f"klatt {rng.randint(1, 6)}")
    if rng.random() < 0.3:
        lines.append(f"echo {rng.randint(10, 80)} {rng.randint(5, 30)}")
    return "\n".join(lines) + "\n"


def install_espeak_variants(out: Path, n: int, rng: random.Random) -> tuple[Path, list[str]]:
    """A private copy of espeak-ng's data with n random variants added; returns (--path, variant names)."""
    root = out / "espeak"
    data = root / "espeak-ng-data"
    if not data.exists():
        version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
        shutil.copytree(version.split("Data at:")[1].strip(), data)  # "... Data at: /usr/lib/.../espeak-ng-data"
    names = [f"rnd{i:04d}" for i in range(n)]
    for name in names:
        (data / "voices" / "!v" / name).write_text(random_espeak_variant(rng, name))
    return root, names + ESPEAK_STOCK_VARIANTS


def synthesize(job: Job) -> np.ndarray:
    """Float32 mono samples at 16 kHz."""
    if job.source == "kokoro":
        audio = kokoro.synthesize(job.kokoro_model, job.text, job.mix, job.speed / 100, job.accent)
        return soxr.resample(audio, kokoro.RATE, SAMPLE_RATE).astype(np.float32)
    if job.source == "piper":
        audio = piper.synthesize(job.text, job.speed / 100, *job.noise)
        return soxr.resample(audio, piper.RATE, SAMPLE_RATE).astype(np.float32)
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        if job.source == "espeak-ng":
            cmd = ["espeak-ng", f"--path={job.espeak_path}", "-v", job.voice, "-s", str(job.speed),
                   "-p", str(job.pitch), "-g", str(job.word_gap), "-w", tmp.name, job.text]
            subprocess.run(cmd, check=True, capture_output=True)
        elif job.source == "flite":
            subprocess.run(["flite", "-voice", job.voice, "-t", job.text, "-o", tmp.name], check=True,
                           capture_output=True)
        elif job.source == "pico":
            markup = f'<speed level="{job.speed}"><pitch level="{job.pitch}">{job.text}</pitch></speed>'
            subprocess.run(["pico2wave", "-l", job.voice, "-w", tmp.name, markup], check=True, capture_output=True)
        elif job.source == "rhvoice":
            subprocess.run(["RHVoice-test", "-p", job.voice, "-r", str(job.speed), "-t", str(job.pitch), "-R",
                            str(SAMPLE_RATE), "-o", tmp.name], input=job.text, text=True, check=True,
                           capture_output=True)
        elif job.source == "mbrola":
            subprocess.run(["espeak-ng", "-v", f"mb-{job.voice}", "-s", str(175 * job.speed // 100), "-p",
                            str(50 * job.pitch // 100), "-w", tmp.name, job.text], check=True, capture_output=True)
        else:
            subprocess.run(["text2wave", "-eval", f"(voice_{job.voice})", "-o", tmp.name], input=job.text,
                           text=True, check=True, capture_output=True)
        audio, rate = sf.read(tmp.name, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    return audio.astype(np.float32)


def _render(job: Job) -> dict:
    audio = synthesize(job)
    sf.write(job.path, audio, SAMPLE_RATE, format="FLAC")
    return {"audio": job.path, "text": job.text, "duration": round(len(audio) / SAMPLE_RATE, 3),
            "source": job.source, "voice": job.voice_label}


def _jobs(out: Path, name: str, texts: list[str], voices: list[tuple[str, str]], espeak_path: Path,
          rng: random.Random) -> list[Job]:
    audio_dir = out / "audio" / name
    audio_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, text in enumerate(texts):
        source, voice = rng.choice(voices)
        extra = {}
        if source == "espeak-ng":
            extra = dict(espeak_path=str(espeak_path), speed=rng.randint(120, 220), pitch=rng.randint(20, 80),
                         word_gap=rng.choice([0, 0, 0, 1, 2, 4, 8]))
        elif source in MORE_ENGINES:
            extra = dict(speed=rng.randint(80, 125), pitch=rng.randint(80, 125))
        jobs.append(Job(str(audio_dir / f"{i:06d}.flac"), text, source, voice, **extra))
    return jobs


def kokoro_jobs(out: Path, name: str, texts: list[str], speakers: int, rng: random.Random, start: int,
                reach: tuple[float, float] = (0.0, 0.0)) -> list[Job]:
    """Kokoro renderings of `texts` by `speakers` new random blends of its voices, at random pace and
    accent, numbered from utterance `start` (a rerun with more utterances adds a part with its own blends).
    A `reach` above zero pushes each blend past the five styles, away from its least-weighted one:
    (1 + t) * blend - t * (that style), t drawn from `reach` (>= 0.25 makes that weight negative), a voice
    that no mix of them is (weights still sum to one)."""
    model = str(kokoro.assemble_model(out / "kokoro"))
    alpha = [0.5] * len(kokoro.VOICES)  # mostly one or two voices dominate a blend
    far = reach[1] > 0
    blends = []
    for _ in range(speakers):
        mix = np.random.default_rng(rng.getrandbits(32)).dirichlet(alpha)
        if far:  # only then: the convex parts' random draws stay as they were
            t = rng.uniform(*reach)
            mix = (1 + t) * mix - t * np.eye(len(mix))[np.argmin(mix)]
        blends.append(tuple(float(w) for w in mix))
    prefix = "far" if far else "blend"
    part = f"@{start}" if start else ""  # blend names stay unique across parts
    audio_dir = out / "audio" / name
    audio_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, text in enumerate(texts, start):
        speaker = rng.randrange(speakers)
        jobs.append(Job(str(audio_dir / f"{i:06d}.flac"), text, "kokoro", f"{prefix}{speaker:03d}{part}",
                        speed=rng.randint(80, 125), kokoro_model=model, mix=blends[speaker],
                        accent=rng.choice(["en-us", "en-us", "en-us", "en-gb", "en-gb-x-rp"])))
    return jobs


def piper_jobs(out: Path, texts: list[str], rng: random.Random) -> list[Job]:
    """Piper "joe" renderings of `texts` at random pace and variability."""
    audio_dir = out / "audio" / "train_piper"
    audio_dir.mkdir(parents=True, exist_ok=True)
    return [Job(str(audio_dir / f"{i:06d}.flac"), text, "piper", "joe", speed=rng.randint(80, 125),
                noise=(round(rng.uniform(0.4, 0.9), 2), round(rng.uniform(0.5, 1.0), 2)))
            for i, text in enumerate(texts)]


def fsdd_rows(fsdd: Path, held_out_takes: int) -> tuple[list[dict], list[dict]]:
    """(train, valid) manifest rows for FSDD's {digit}_{speaker}_{take}.wav, in place."""
    train, valid = [], []
    for path in sorted((fsdd / "recordings").glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        row = {"audio": str(path.resolve()), "text": DIGITS[int(digit)], "duration": round(sf.info(path).duration, 3),
               "source": "fsdd", "voice": speaker}
        (valid if int(take) < held_out_takes else train).append(row)
    return train, valid


def write_manifest(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")  # a rerun keeps existing manifests: never leave half of one
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tmp.replace(path)
    hours = sum(r["duration"] for r in rows) / 3600
    print(f"{path}: {len(rows)} utterances, {hours:.2f} h")


def build(out: Path, train_utterances: int, valid_utterances: int, espeak_variants: int, english_share: float,
          english_utterances: int, kokoro_utterances: int, kokoro_speakers: int, kokoro_far_utterances: int,
          piper_utterances: int, more_engines_utterances: int, fsdd: Path | None, seed: int, workers: int) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    espeak_path, variants = install_espeak_variants(out, espeak_variants, rng)
    english = sentences.english_sentences()
    espeak = [("espeak-ng", f"{a}+{v}") for a in ESPEAK_ACCENTS for v in variants]
    flite = [("flite", v) for v in FLITE_TRAIN_VOICES]
    train_voices = espeak + flite * (len(espeak) // (3 * len(flite)))  # flite: about a quarter
    splits = {
        "train": _jobs(out, "train", sentences.mixed(train_utterances, seed, False, english, english_share),
                       train_voices, espeak_path, rng),
        "valid_seen": _jobs(out, "valid_seen", sentences.mixed(valid_utterances, seed + 1, True, english,
                                                               english_share), train_voices, espeak_path, rng),
        "valid_unseen_family": _jobs(out, "valid_unseen_family",
                                     sentences.mixed(valid_utterances, seed + 2, True, english, english_share),
                                     [("festival", v) for v in FESTIVAL_UNSEEN_VOICES], espeak_path, rng),
    }
    if english_utterances:
        english_rng = random.Random(seed + 5)  # its own draws: the other splits stay as they were
        pool = [s for s in english if not sentences.is_held_out(s)]
        splits["train_english"] = _jobs(out, "train_english",
                                        english_rng.sample(pool, min(english_utterances, len(pool))),
                                        train_voices, espeak_path, english_rng)
    if piper_utterances:
        splits["train_piper"] = piper_jobs(
            out, sentences.mixed(piper_utterances, seed + 4, False, english, english_share), random.Random(seed + 4))
    if more_engines_utterances:
        splits["train_more_engines"] = _jobs(
            out, "train_more_engines", sentences.mixed(more_engines_utterances, seed + 7, False, english,
                                                       english_share), MORE_ENGINE_VOICES, espeak_path,
            random.Random(seed + 7))
    if kokoro_far_utterances:
        splits["train_kokoro_far"] = kokoro_jobs(
            out, "train_kokoro_far", sentences.mixed(kokoro_far_utterances, seed + 6, False, english, english_share),
            kokoro_speakers, random.Random(seed + 6), 0, KOKORO_FAR_REACH)
    kept = {name: manifest.rows(out / f"{name}.jsonl") for name in [*splits, "train_kokoro"]
            if (out / f"{name}.jsonl").exists()}
    splits = {name: jobs for name, jobs in splits.items() if name not in kept}
    start = len(kept.get("train_kokoro", []))
    if kokoro_utterances > start:
        part_seed = seed + 3 + start  # each added part: new sentences and new blends
        texts = sentences.mixed(kokoro_utterances - start, part_seed, False, english, english_share)
        splits["train_kokoro"] = kokoro_jobs(out, "train_kokoro", texts, kokoro_speakers, random.Random(part_seed),
                                             start)
    for name in sorted(kept.keys() - splits.keys()):
        print(f"{out / name}.jsonl exists: kept ({len(kept[name])} utterances)")
    with ProcessPoolExecutor(workers) as pool:
        for name, jobs in splits.items():
            rows = list(tqdm(pool.map(_render, jobs, chunksize=16), total=len(jobs), desc=name))
            write_manifest(out / f"{name}.jsonl", kept.get(name, []) + [
                {**r, "audio": str(Path(r["audio"]).relative_to(out))} for r in rows])
    if fsdd:
        train, valid = fsdd_rows(fsdd, held_out_takes=5)
        write_manifest(out / "train_fsdd.jsonl", train)
        write_manifest(out / "valid_fsdd.jsonl", valid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/corpus"))
    p.add_argument("--train-utterances", type=int, default=16000)
    p.add_argument("--valid-utterances", type=int, default=200)
    p.add_argument("--espeak-variants", type=int, default=300, help="random espeak-ng voices to invent")
    p.add_argument("--english-share", type=float, default=0.4, help="share of general English sentences")
    p.add_argument("--english-utterances", type=int, default=0,
                   help="plain English training sentences, each once, for train_english.jsonl (0: none)")
    p.add_argument("--kokoro-utterances", type=int, default=2000, help="Kokoro-82M utterances in all (0: none)")
    p.add_argument("--kokoro-speakers", type=int, default=200, help="random blends of Kokoro's voices (per added part)")
    p.add_argument("--kokoro-far-utterances", type=int, default=0,
                   help="Kokoro-82M utterances in --kokoro-speakers blends pushed past its five styles (0: none)")
    p.add_argument("--piper-utterances", type=int, default=1500, help='Piper "joe" utterances (0: none)')
    p.add_argument("--more-engines-utterances", type=int, default=0,
                   help="utterances in SVOX Pico, RHVoice and MBROLA voices, Debian contrib/non-free (0: none)")
    p.add_argument("--fsdd", type=Path, help="FSDD folder (with recordings/), e.g. ../shared/data/fsdd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    if a.fsdd and not (a.fsdd / "recordings").is_dir():
        p.error(f"--fsdd {a.fsdd}: no recordings/ folder")
    if (a.kokoro_utterances or a.kokoro_far_utterances) and a.kokoro_speakers < 1:
        p.error("--kokoro-speakers must be at least 1")
    if a.more_engines_utterances and (missing := [t for t in ("pico2wave", "RHVoice-test", "mbrola")
                                              if not shutil.which(t)]):
        p.error(f"--more-engines-utterances needs {', '.join(missing)}: Debian's libttspico-utils, rhvoice and "
                "rhvoice-english, mbrola and its voices, from its contrib and non-free sections (README)")
    build(a.out, a.train_utterances, a.valid_utterances, a.espeak_variants, a.english_share, a.english_utterances,
          a.kokoro_utterances, a.kokoro_speakers, a.kokoro_far_utterances, a.piper_utterances,
          a.more_engines_utterances, a.fsdd, a.seed, a.workers)


if __name__ == "__main__":
    main()
