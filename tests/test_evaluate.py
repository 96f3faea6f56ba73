"""python -m models.evaluate: the accuracy table of the model card, from the served
front-end, ONNX model and decoder."""

import json
import subprocess
import sys

from conftest import BUNDLED, ROOT


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
