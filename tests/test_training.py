"""The training recipe end to end on a tiny synthesized corpus: corpus -> CTC
training with held-out CER/WER -> resume -> a checkpoint that exports."""

import json
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import BUNDLED, ROOT
from prerequisites import requires

from models import sentences
from models.corpus import KOKORO_FAR_REACH, kokoro_jobs
from models.model import TOKENS, ModelConfig, StreamingCTC, init_from, save_checkpoint
from models.train import (
    SR,
    Augment,
    _convert_voice,
    cached_features,
    load_config,
    read_rows,
    train_step,
    typed_settings,
)

FSDD = ROOT.parent / "shared" / "data" / "fsdd"
needs_synthesis = requires("synthesis", "fortunes")

TINY = """
seed = 0
train = ["{corpus}/train.jsonl", {{ path = "{corpus}/train.jsonl", copies = 2 }}]
valid = {{ unseen_family = "{corpus}/valid_unseen_family.jsonl", seen_voices = "{corpus}/valid_seen.jsonl" }}
best_on = "unseen_family"
max_minutes = 5
max_steps = 4
batch_frames = 4000
lr = 1e-3
valid_every = 2
threads = 2
[augment]
noise_probability = 0.5
reverb_probability = 0.5
telephone_probability = 0.5
speed_probability = 0.5
vtlp_probability = 0.5
[model]
conv_channels = 16
hidden = 16
layers = 2
lookahead = 1
"""


def launch(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def run(*args):
    result = launch(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_voice_conversion_makes_a_new_voice_and_keeps_unvoiced_audio():
    t = np.arange(SR) / SR
    vowel = (0.3 * np.sign(np.sin(2 * np.pi * 120 * t)) * np.hanning(SR)).astype(np.float32)  # a buzzy 120 Hz source
    aug = Augment(voice_conversion_probability=1.0, pitch_median_hz=(220.0, 220.0))
    converted = _convert_voice(vowel, aug, np.random.default_rng(0))
    assert converted.shape == vowel.shape and np.isfinite(converted).all()
    spectrum = np.abs(np.fft.rfft(converted[4000:12000]))
    assert 200 < np.argmax(spectrum[:400]) * SR / 8000 < 240  # the fundamental moved to the new median
    silence = np.zeros(SR, np.float32)
    assert _convert_voice(silence, aug, np.random.default_rng(0)) is silence
    with pytest.raises(ValueError, match="pitch_range_factor"):  # would hang Praat: refused at start-up
        Augment(pitch_range_factor=(0.5, 1.5))


def test_shipped_configs_name_known_settings():
    for path in (ROOT / "models" / "configs").glob("*.toml"):
        cfg = load_config(path)
        typed_settings(cfg)  # raises on an unknown or invalid setting
        assert cfg["best_on"] in cfg["valid"]


def test_features_are_extracted_again_when_their_settings_change(tmp_path):
    calls = []

    def extract(n):
        calls.append(n)
        return [(np.full((n + 2, 80), n, np.float32), f"text {i}") for i in range(n)]

    path = tmp_path / "train_features.npz"
    first = cached_features(path, {"seed": 0}, lambda: extract(3))
    again = cached_features(path, {"seed": 0}, lambda: extract(5))
    assert calls == [3]
    assert [t for _, t in again] == [t for _, t in first]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again))
    assert len(cached_features(path, {"seed": 1}, lambda: extract(5))) == 5 and calls == [3, 5]


def test_a_source_filter_that_matches_nothing_is_refused(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.flac", "text": "hi", "duration": 1.0, "source": "flite",
                                    "voice": "kal"}) + "\n")
    with pytest.raises(ValueError, match="no rows with source in"):
        read_rows(str(manifest), sources=["festvial"])


def test_look_ahead_starts_from_the_causal_model_and_streams(tmp_path):
    causal = StreamingCTC(ModelConfig(hidden=32, conv_channels=16, layers=2, dropout=0.0)).eval()
    save_checkpoint(tmp_path / "causal.pt", causal, {}, {"step": 1})
    ahead = StreamingCTC(ModelConfig(hidden=32, conv_channels=16, layers=2, dropout=0.0, lookahead=2)).eval()
    assert init_from(ahead, tmp_path / "causal.pt") == ["lookahead"]
    x = torch.randn(1, 80, 96)

    def run_whole(model):
        return model(x, torch.tensor([96]), *model.initial_state(1))[0][0]

    with torch.no_grad():
        before = run_whole(causal)
        assert torch.allclose(run_whole(ahead)[2:], before[:-2], atol=1e-6)  # the same outputs, 2 frames later
        torch.nn.init.normal_(ahead.lookahead.weight, std=0.3)  # as if trained
        whole, state, chunks = run_whole(ahead), ahead.initial_state(1), []
        for i in range(0, 96, 16):
            out, _, *state = ahead(x[:, :, i:i + 16], torch.tensor([16]), *state)
            chunks.append(out[0])
    assert torch.allclose(torch.cat(chunks), whole, atol=1e-5)  # the carried state holds the look-ahead
    assert not torch.allclose(whole[2:], before[:-2], atol=1e-3)  # and the right context now counts
    save_checkpoint(tmp_path / "ahead.pt", ahead, {}, {"step": 1})
    with pytest.raises(ValueError, match="do not fit this model"):  # a look-ahead model does not shrink back
        init_from(causal, tmp_path / "ahead.pt")
    with pytest.raises(ValueError, match="do not fit this model"):  # nor into other sizes
        init_from(StreamingCTC(ModelConfig(hidden=48, conv_channels=16, layers=2)), tmp_path / "causal.pt")


def test_a_bfloat16_training_step_keeps_float32_and_learns():
    torch.manual_seed(0)
    model = StreamingCTC(ModelConfig(conv_channels=32, hidden=32, layers=2, dropout=0.0, lookahead=1))
    batch = (torch.randn(4, 80, 96), torch.full((4,), 96), torch.randint(1, len(TOKENS), (24,)), torch.full((4,), 6))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    losses = [train_step(model, opt, ctc, batch, bf16=True) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CTC loss and decoding need float32 log-probs
        assert model(*batch[:2], *model.initial_state(4))[0].dtype == torch.float32


def test_a_bf16_setting_that_is_not_a_boolean_is_refused(tmp_path):
    (tmp_path / "c.toml").write_text(f'base = "{ROOT / "models" / "configs" / "default.toml"}"\nbf16 = "yes"\n')
    result = launch("models.train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "bf16 must be true or false, not 'yes'" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_training_speed_benchmark_times_both_precisions():
    out = run("models.benchmark", "--train-config", str(ROOT / "models" / "configs" / "default.toml"),
              "--steps", "1").stdout
    assert "2,783,389 parameters, batches of 24 x 5 s" in out
    assert re.search(r"forward in float32 : [0-9.]+ s per step", out)
    assert re.search(r"forward in bfloat16: [0-9.]+ s per step", out)


def test_checkpoints_of_different_models_are_not_averaged(tmp_path):
    for name, hidden in (("a.pt", 32), ("b.pt", 48)):
        tiny = ModelConfig(hidden=hidden, conv_channels=16, layers=1, dropout=0.0)
        save_checkpoint(tmp_path / name, StreamingCTC(tiny), {}, {"step": 1})
    result = launch("models.average", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "c.pt"))
    assert result.returncode == 2 and "is not the same model" in result.stderr
    assert not (tmp_path / "c.pt").exists()


def test_corpus_refuses_kokoro_utterances_without_speakers(tmp_path):
    result = launch("models.corpus", "--out", str(tmp_path / "c"), "--kokoro-speakers", "0")
    assert result.returncode == 2 and "--kokoro-speakers must be at least 1" in result.stderr
    assert not (tmp_path / "c").exists()  # refused before any work


@needs_synthesis
def test_corpus_train_resume_export(tmp_path):
    corpus = tmp_path / "corpus"
    fsdd = ["--fsdd", str(FSDD)] if FSDD.is_dir() else []
    args = ["--out", str(corpus), "--train-utterances", "12", "--valid-utterances", "4", "--espeak-variants", "3",
            "--piper-utterances", "2", "--english-utterances", "3", "--kokoro-far-utterances", "2",
            "--more-engines-utterances", "9", *fsdd]
    run("models.corpus", *args, "--kokoro-utterances", "2", "--kokoro-speakers", "2")
    rows = jsonl(corpus / "train.jsonl")
    kokoro = jsonl(corpus / "train_kokoro.jsonl")
    assert {r["source"] for r in kokoro} == {"kokoro"} and all(r["duration"] > 0.5 for r in kokoro)
    audio, rate = sf.read(corpus / kokoro[0]["audio"])
    assert rate == 16000 and np.abs(audio).max() > 0.05  # speech, resampled to the corpus rate
    far = jsonl(corpus / "train_kokoro_far.jsonl")
    assert len(far) == 2 and {r["voice"][:3] for r in far} == {"far"} and all(r["duration"] > 0.5 for r in far)
    mixes = [j.mix for j in kokoro_jobs(corpus, "far_probe", ["a"] * 8, 8, random.Random(0), 0, KOKORO_FAR_REACH)]
    assert all(min(m) < 0 and abs(sum(m) - 1) < 1e-9 for m in mixes)  # past the styles, not a mix of them
    piper = jsonl(corpus / "train_piper.jsonl")
    audio, rate = sf.read(corpus / piper[0]["audio"])
    assert {r["source"] for r in piper} == {"piper"} and rate == 16000 and np.abs(audio).max() > 0.05
    more = jsonl(corpus / "train_more_engines.jsonl")
    assert {r["source"] for r in more} == {"pico", "rhvoice", "mbrola"}  # each engine speaks
    for row in more:
        audio, rate = sf.read(corpus / row["audio"])
        assert rate == 16000 and row["duration"] > 0.5 and np.abs(audio).max() > 0.05, row
    built = (corpus / "train.jsonl").stat().st_mtime_ns
    rerun = run("models.corpus", *args, "--kokoro-utterances", "3", "--kokoro-speakers", "1").stdout
    assert "train.jsonl exists: kept (12 utterances)" in rerun  # a rerun builds only what is missing
    assert (corpus / "train.jsonl").stat().st_mtime_ns == built
    extended = jsonl(corpus / "train_kokoro.jsonl")
    assert extended[:2] == kokoro and len(extended) == 3 and (corpus / extended[2]["audio"]).is_file()
    assert extended[2]["voice"].split("/")[0] not in {r["voice"].split("/")[0] for r in kokoro}  # a new blend
    assert len(rows) == 12 and {"audio", "text", "duration", "source", "voice"} <= rows[0].keys()
    english = jsonl(corpus / "train_english.jsonl")
    assert len(english) == 3 and {r["source"] for r in english} <= {"espeak-ng", "flite"}
    training_side = {s for s in sentences.english_sentences() if not sentences.is_held_out(s)}
    assert {r["text"] for r in english} <= training_side
    unseen = jsonl(corpus / "valid_unseen_family.jsonl")
    assert {r["source"] for r in unseen} == {"festival"} and "festival" not in {r["source"] for r in rows}
    if fsdd:
        held_out = jsonl(corpus / "valid_fsdd.jsonl")
        trained = {r["audio"] for r in jsonl(corpus / "train_fsdd.jsonl")}
        assert len(held_out) == 250 and trained.isdisjoint(r["audio"] for r in held_out)
        assert all(str(FSDD.resolve()) in r["audio"] for r in held_out)  # read in place, not copied

    (tmp_path / "tiny.toml").write_text(TINY.format(corpus=corpus))
    out = tmp_path / "run"
    first = run("models.train", "--config", str(tmp_path / "tiny.toml"), "--out", str(out))
    assert "train: 36 utterances" in first.stdout
    assert "seen_voices/cer=" in first.stdout and "unseen_family/wer=" in first.stdout
    metrics = jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [2, 4]
    assert all(0 <= m["unseen_family/cer"] and 0 <= m["seen_voices/wer"] for m in metrics)

    resumed = run("models.train", "--config", str(tmp_path / "tiny.toml"), "--out", str(out), "--resume")
    assert "resumed at step 4" in resumed.stdout
    assert f"features read from {out / 'train_features.npz'}" in resumed.stdout  # no second extraction
    assert "train: 36 utterances" in resumed.stdout

    # Stage 2: fine-tune from stage 1 with voice conversion, watching beam + LM WER (the bundled LM).
    lm = tmp_path / "lm"
    lm.mkdir()
    for name in ("lm.bin", "unigrams.txt"):
        shutil.copy(BUNDLED / name, lm / name)
    (lm / "decoder.json").write_text('{"lm_weight": 0.5, "word_bonus": 1.0}')
    tuned = TINY.format(corpus=corpus).replace("seed = 0", f'seed = 0\ninit = "{out / "best.pt"}"\nlm = "{lm}"')
    tuned = tuned.replace("[augment]", "[augment]\nvoice_conversion_probability = 1.0")
    tuned = tuned.replace("valid_every = 2", "valid_every = 4\nsave_every = 1\nbf16 = true")
    espeak = sum(r["source"] == "espeak-ng" for r in rows)  # one source weighted up (default_stage3.toml: flite)
    tuned = tuned.replace("copies = 2 }", 'copies = 2, sources = ["espeak-ng"] }')
    (tmp_path / "finetune.toml").write_text(tuned)
    second = run("models.train", "--config", str(tmp_path / "finetune.toml"), "--out", str(tmp_path / "ft"))
    assert f"initialized from {out / 'best.pt'}" in second.stdout
    assert "forward pass in bfloat16" in second.stdout
    assert f"train: {12 + 2 * espeak} utterances" in second.stdout
    assert "best unseen_family lm_wer" in second.stdout
    assert "saved last.pt at step 3" in second.stdout and "saved last.pt at step 4" not in second.stdout
    metrics = jsonl(tmp_path / "ft" / "metrics.jsonl")
    assert all(0 <= m["unseen_family/lm_wer"] and 0 <= m["seen_voices/lm_cer"] for m in metrics)

    averaged = tmp_path / "average.pt"  # the bundled model is two checkpoints of one run averaged
    assert "mean of 2 checkpoints" in run("models.average", str(out / "best.pt"), str(tmp_path / "ft" / "last.pt"),
                                          "--out", str(averaged)).stdout
    ends = [torch.load(p, weights_only=False)["state_dict"] for p in (out / "best.pt", tmp_path / "ft" / "last.pt")]
    mean = torch.load(averaged, weights_only=False)["state_dict"]
    assert not torch.equal(ends[0]["out.weight"], ends[1]["out.weight"])
    assert torch.allclose(mean["out.weight"], (ends[0]["out.weight"] + ends[1]["out.weight"]) / 2)
    exported = run("export", "--ckpt", str(averaged), "--out", str(tmp_path / "model"))
    assert "parity onnx_vs_pytorch" in exported.stdout
    assert (tmp_path / "model" / "model.onnx").is_file()
