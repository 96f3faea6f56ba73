"""Manifests: JSON lines, one clip a line (`audio`: a path relative to the manifest's folder,
`text`: its transcript, optionally `set`, `duration`, ...), as the recipe writes them and as a
model directory's `canaries/manifest.jsonl` holds them. Read here for training, evaluation,
export's calibration, the self-check, the prober and the tools."""

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class ManifestError(ValueError):
    """A line of a manifest that is not a clip, named by its number (its contents not quoted)."""


def rows(path: Path) -> list[dict]:
    """The rows as they are written."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_manifest(path: str | Path) -> list[dict]:
    """Manifest rows with `audio` resolved: relative paths are relative to the manifest's folder."""
    path = Path(path)
    return [{**r, "audio": str(path.parent / r["audio"])} for r in rows(path)]


def checked_clips(path: Path) -> list[tuple[Path, str, str]]:
    """(audio, text, set) of each line of a manifest no one has vetted (a model directory's
    canaries): ManifestError naming the line that is not a JSON object of strings with `audio` and
    `text`, or whose audio is not a file inside the manifest's folder."""
    folder, name = path.parent, f"{path.parent.name}/{path.name}"
    clips = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            row = json.loads(line)
            audio, text, set_name = row["audio"], row["text"], row.get("set", "")
        except (ValueError, KeyError, TypeError):
            raise ManifestError(f"{where}: not a JSON object with \"audio\" and \"text\"") from None
        if not all(isinstance(v, str) for v in (audio, text, set_name)):
            raise ManifestError(f"{where}: \"audio\", \"text\" and \"set\" must be strings")
        clip = folder / audio
        if Path(audio).is_absolute() or not clip.resolve().is_relative_to(folder.resolve()):
            raise ManifestError(f"{where}: the audio must be a file inside {folder.name}/")
        if not clip.is_file():
            raise ManifestError(f"{where}: {folder.name}/{audio} is not a file")
        clips.append((clip, text, set_name))
    return clips


def spread(rows: list[dict], limit: int | None) -> list[dict]:
    """`limit` rows evenly spaced over the manifest (all of them without a limit): a manifest
    ordered by speaker or word still gives every part its share."""
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


def read_audio(path: str | Path, rate: int) -> np.ndarray:
    """A clip as mono float32 samples at `rate`."""
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return soxr.resample(audio, sr, rate) if sr != rate else audio
