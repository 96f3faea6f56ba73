"""Manifests of real people's speech, read in place from each dataset's published layout.

    python -m models.real_speech --out data/real_manifests \\
        [--speechocean762 DIR] [--speech-commands DIR] [--wake-word DIR]

Writes train_<set>.jsonl and valid_<set>.jsonl (the corpus's manifest format, audio
referenced in place by absolute path, never copied), split by speaker where the
dataset names its speakers:

- speechocean762 (DIR holds WAVE/, train/, test/, Kaldi-style `text` and `wav.scp`;
  OpenSLR SLR101 or its GitHub copy): its own train/test split, whose speakers differ.
- Speech Commands (DIR holds one folder per word, files `<speaker>_nohash_<n>.wav`,
  `_unknown_/<word>_<speaker>_nohash_<n>.wav` as in the v0.02 test set; `_silence_`
  skipped): speakers are held out by a hash of their id (half of them).
- Picovoice wake-word benchmark (DIR holds one folder per keyword, e.g. `smart mirror/`):
  it publishes no speaker ids, so clips are held out by a hash of their file name
  (30%); the same speaker may be on both sides.

FSDD comes from `python -m models.corpus --fsdd` (train_fsdd / valid_fsdd). Files that
cannot be decoded are skipped and counted.
"""

import argparse
import hashlib
import re
from pathlib import Path

import soundfile as sf

from models.corpus import write_manifest

ALLOWED = re.compile(r"^[a-z' ]+$")


def _held_out(key: str, share: float) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x100000000 < share


def _row(path: Path, text: str, source: str, voice: str) -> dict | None:
    text = " ".join(text.lower().split())
    if not ALLOWED.match(text):
        return None
    try:
        info = sf.info(path)
        sf.read(path)  # a truncated or corrupt file (some wake-word FLACs lose sync) is skipped
    except (sf.LibsndfileError, RuntimeError):
        return None
    return {"audio": str(path.resolve()), "text": text, "duration": round(info.duration, 3), "source": source,
            "voice": voice}


def _kaldi(path: Path) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())


def speechocean762(root: Path) -> tuple[list, list, int]:
    splits, skipped = [], 0
    for part in ("train", "test"):
        text, wavs, spk = (_kaldi(root / part / f) for f in ("text", "wav.scp", "utt2spk"))
        rows = []
        for utt in sorted(text):
            row = _row(root / wavs[utt].strip(), text[utt], "speechocean762", spk[utt].strip())
            rows.append(row) if row else None
            skipped += row is None
        splits.append(rows)
    return splits[0], splits[1], skipped


def speech_commands(root: Path) -> tuple[list, list, int]:
    train, valid, skipped = [], [], 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "_silence_"):
        for path in sorted(folder.glob("*.wav")):
            stem = path.name.split(".")[0]
            if folder.name == "_unknown_":
                word, stem = stem.split("_", 1)
            else:
                word = folder.name
            speaker = stem.split("_nohash_")[0]
            row = _row(path, word, "speech_commands", speaker)
            if row is None:
                skipped += 1
            else:
                (valid if _held_out(speaker, 0.5) else train).append(row)
    return train, valid, skipped


def wake_word(root: Path) -> tuple[list, list, int]:
    train, valid, skipped = [], [], 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(p for p in folder.iterdir() if p.suffix in (".wav", ".flac")):
            row = _row(path, folder.name, "wake_word", "")
            if row is None:
                skipped += 1
            else:
                (valid if _held_out(f"{folder.name}/{path.name}", 0.3) else train).append(row)
    return train, valid, skipped


DATASETS = {"speechocean762": speechocean762, "speech_commands": speech_commands, "wake_word": wake_word}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/real_manifests"))
    for name in DATASETS:
        p.add_argument(f"--{name.replace('_', '-')}", type=Path, metavar="DIR")
    a = p.parse_args()
    chosen = {name: getattr(a, name) for name in DATASETS if getattr(a, name)}
    if not chosen:
        p.error("name at least one dataset folder")
    for name, root in chosen.items():
        if not root.is_dir():
            p.error(f"--{name.replace('_', '-')} {root}: no such folder")
    a.out.mkdir(parents=True, exist_ok=True)
    for name, root in chosen.items():
        train, valid, skipped = DATASETS[name](root)
        write_manifest(a.out / f"train_{name}.jsonl", train)
        write_manifest(a.out / f"valid_{name}.jsonl", valid)
        hours = [sum(r["duration"] for r in rows) / 3600 for rows in (train, valid)]
        speakers = [len({r["voice"] for r in rows}) for rows in (train, valid)]
        print(f"{name}: train {len(train)} ({hours[0]:.2f} h, {speakers[0]} speakers), "
              f"valid {len(valid)} ({hours[1]:.2f} h, {speakers[1]} speakers), {skipped} skipped")


if __name__ == "__main__":
    main()
