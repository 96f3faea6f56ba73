"""The training recipe end to end on a tiny synthesized corpus: corpus -> CTC
training with held-out CER/WER -> a checkpoint that exports."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")),
                                reason="needs espeak-ng and flite (installed by .ci/run)")


def run(*args, cwd=ROOT):
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_corpus_train_resume_export(tmp_path):
    corpus = tmp_path / "corpus"
    run("models.corpus", "--out", str(corpus), "--train-utterances", "12", "--valid-utterances", "4")
    rows = [json.loads(l) for l in (corpus / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"audio", "text", "duration", "source", "voice"} <= rows[0].keys()
    unseen = [json.loads(l) for l in (corpus / "valid_unseen_voice.jsonl").read_text().splitlines()]
    assert {r["voice"] for r in unseen}.isdisjoint({r["voice"] for r in rows})

    config = (ROOT / "models" / "configs" / "skeleton.toml").read_text()
    config = config.replace("data/corpus", str(corpus)).replace("max_steps = 3000", "max_steps = 4") \
        .replace("valid_every = 250", "valid_every = 2").replace("hidden = 320", "hidden = 32") \
        .replace("conv_channels = 256", "conv_channels = 32")
    (tmp_path / "tiny.toml").write_text(config)
    out = tmp_path / "run"
    first = run("models.train", "--config", str(tmp_path / "tiny.toml"), "--out", str(out))
    assert "seen_voices/cer=" in first.stdout and "unseen_voice/wer=" in first.stdout
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert all(0 <= m["unseen_voice/cer"] and 0 <= m["seen_voices/wer"] for m in metrics)

    resumed = run("models.train", "--config", str(tmp_path / "tiny.toml"), "--out", str(out), "--resume")
    assert "resumed at step 4" in resumed.stdout

    exported = run("export", "--ckpt", str(out / "best.pt"), "--out", str(tmp_path / "model"))
    assert "parity onnx_vs_pytorch" in exported.stdout
    assert (tmp_path / "model" / "model.onnx").is_file()
