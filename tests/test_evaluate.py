"""python -m models.evaluate: the accuracy table of the model card, from the served
front-end, ONNX model and decoder."""

import json
import subprocess
import sys

from conftest import BUNDLED, ROOT
from prerequisites import requires


@requires("fortunes")
def test_evaluation_reports_each_set_and_its_plain_english_apart(tmp_path):
    canaries = BUNDLED / "canaries" / "manifest.jsonl"
    result = subprocess.run([sys.executable, "-m", "models.evaluate", "--model", str(BUNDLED),
                             "--set", f"canaries={canaries}", "--json", str(tmp_path / "table.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| canaries: plain English | beam+LM |" in result.stdout
    table = {(r["set"], r["decoding"]): r for r in json.loads((tmp_path / "table.json").read_text())}
    whole, english, other = (table[name, "beam+LM"] for name in
                             ("canaries", "canaries: plain English", "canaries: other"))
    assert whole["utterances"] == 20 and english["utterances"] + other["utterances"] == 20
    assert 0 < english["utterances"] < 20
    assert whole["wer"] < table["canaries", "greedy"]["wer"]  # the LM helps (a target of issue 3)
    assert english["wer"] > other["wer"]  # open-ended English is the harder part, by far


def evaluate(*args):
    result = subprocess.run([sys.executable, "-m", "models.evaluate", "--model", str(BUNDLED), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_decoding_settings_are_overridden_and_tuned_at_a_beam_width(tmp_path):
    canaries = f"canaries={BUNDLED / 'canaries' / 'manifest.jsonl'}"
    default = evaluate("--set", canaries, "--json", str(tmp_path / "default.json"))
    assert "Decoding CPU time per second of audio (one thread): canaries: greedy" in default
    evaluate("--set", canaries, "--lm-weight", "4", "--word-bonus", "-3", "--json", str(tmp_path / "lm.json"))
    wer = {name: {(r["set"], r["decoding"]): r["wer"] for r in json.loads((tmp_path / name).read_text())}
           for name in ("default.json", "lm.json")}
    assert wer["lm.json"]["canaries", "beam+LM"] > wer["default.json"]["canaries", "beam+LM"]
    assert wer["lm.json"]["canaries", "greedy"] == wer["default.json"]["canaries", "greedy"]

    tuned = evaluate("--set", canaries, "--beam-width", "8", "--tune", str(tmp_path / "decoder.json"))
    assert "best at beam width 8:" in tuned
    chosen = json.loads((tmp_path / "decoder.json").read_text())
    assert chosen["beam_width"] == 8 and chosen["lm_weight"] in (0.3, 0.5, 0.8, 1.2)


def test_whisper_tiny_en_is_measured_beside_ours_on_the_same_audio(tmp_path):
    canaries = f"canaries={BUNDLED / 'canaries' / 'manifest.jsonl'}"
    out = evaluate("--set", canaries, "--whisper", "--limit", "4", "--json", str(tmp_path / "t.json"))
    rows = {r["decoding"]: r for r in json.loads((tmp_path / "t.json").read_text()) if r["set"] == "canaries"}
    assert set(rows) == {"greedy", "beam+LM", "whisper tiny.en"}
    assert all(r["utterances"] == 4 for r in rows.values())
    # Clear synthetic sentences: Whisper gets most words (its digits spelled out, normalized as ours).
    assert rows["whisper tiny.en"]["wer"] < 0.5
    assert "whisper tiny.en" in out and "two threads" in out
