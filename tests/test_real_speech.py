"""python -m models.real_speech: each dataset's published layout in, speaker-split manifests out."""

import json
import subprocess
import sys

import numpy as np
import soundfile as sf
from conftest import ROOT


def clip(path, seconds=0.3):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, int(16000 * seconds)).astype(np.float32), 16000)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_layout_is_read_in_place_and_split_by_speaker(tmp_path):
    so = tmp_path / "speechocean762"
    for part, speaker, utts in (("train", "0001", ["000010011", "000010035"]), ("test", "0003", ["000030012"])):
        (so / part).mkdir(parents=True)
        for utt in utts:
            clip(so / "WAVE" / f"SPEAKER{speaker}" / f"{utt}.WAV")
        (so / part / "text").write_text("".join(f"{u}\tWE CALL IT BEAR\n" for u in utts))
        (so / part / "wav.scp").write_text("".join(f"{u}\tWAVE/SPEAKER{speaker}/{u}.WAV\n" for u in utts))
        (so / part / "utt2spk").write_text("".join(f"{u}\t{speaker}\n" for u in utts))
    sc = tmp_path / "speech_commands"
    speakers = [f"{i:08x}" for i in range(40)]
    for s in speakers:
        clip(sc / "yes" / f"{s}_nohash_0.wav")
        clip(sc / "_unknown_" / f"backward_{s}_nohash_1.wav.wav")
    clip(sc / "_silence_" / "noise.wav")
    ww = tmp_path / "wake_word"
    for i in range(20):
        clip(ww / "smart mirror" / f"{i}.wav")
    (ww / "smart mirror" / "broken.flac").write_bytes(b"fLaC" + bytes(100))

    out = tmp_path / "manifests"
    result = subprocess.run([sys.executable, "-m", "models.real_speech", "--out", str(out), "--speechocean762", str(so),
                             "--speech-commands", str(sc), "--wake-word", str(ww)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    train, valid = rows(out / "train_speechocean762.jsonl"), rows(out / "valid_speechocean762.jsonl")
    assert [r["text"] for r in train] == ["we call it bear"] * 2 and [r["voice"] for r in valid] == ["0003"]
    assert all(r["audio"].startswith(str(so)) for r in train + valid)  # referenced in place, not copied

    train, valid = rows(out / "train_speech_commands.jsonl"), rows(out / "valid_speech_commands.jsonl")
    assert len(train) + len(valid) == 80 and {r["text"] for r in train + valid} == {"yes", "backward"}
    assert not {r["voice"] for r in train} & {r["voice"] for r in valid}  # no speaker on both sides
    assert 10 < len({r["voice"] for r in valid}) < 30
    train, valid = rows(out / "train_wake_word.jsonl"), rows(out / "valid_wake_word.jsonl")
    assert len(train) + len(valid) == 20 and 0 < len(valid) < 12 and train[0]["text"] == "smart mirror"
    assert "wake_word: train" in result.stdout and "1 skipped" in result.stdout


def test_a_missing_folder_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "models.real_speech", "--out", str(tmp_path),
                             "--wake-word", str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "no such folder" in result.stderr
