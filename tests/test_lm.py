"""python -m models.lm: a deployment's own sentences make a domain LM, written into a copy of
the bundled model directory that the service's own recognizer decodes better on that domain."""

import json
import subprocess
import sys

import jiwer
import pytest
import soundfile as sf
from conftest import BUNDLED, ROOT
from prerequisites import requires

from engine.decoder.ctc import CtcDecoder, DecodeOptions
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from engine.recognizer import Recognizer

# A held-out canary (a festival voice no model trained on) whose words the general LM rarely
# sees together: "migratory lifeform", "tropism".
CANARY = next(r for r in map(json.loads, open(BUNDLED / "canaries" / "manifest.jsonl"))
              if r["text"].startswith("hackers are"))


def lm(*args):
    return subprocess.run([sys.executable, "-m", "models.lm", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def transcript(directory) -> str:
    spec = ModelSpec.load(directory)
    recognizer = Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec))
    audio, _ = sf.read(BUNDLED / "canaries" / CANARY["audio"], dtype="float32")
    stream = recognizer.new_stream(DecodeOptions(beam_width=spec.beam_width, lm_weight=spec.lm_weight,
                                                 word_bonus=spec.word_bonus))
    recognizer.accept(stream, audio)
    return recognizer.finish(stream).finals[0].hypotheses[0].text


@requires("lmplz", "wordnet")
def test_a_domain_lm_goes_into_a_copy_of_the_model_and_helps_on_its_domain(tmp_path):
    phrases = tmp_path / "phrases.txt"
    phrases.write_text(f"{CANARY['text']}\nAdd 7 apples to my list!\n\n")
    result = lm("--domain", phrases, "--wordnet", "--wordfreq", 20000, "--model", BUNDLED, "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert f"{phrases}: 2 lines, each counted 20 times" in result.stdout
    out = tmp_path / "m"
    assert (out / "model.onnx").read_bytes() == (BUNDLED / "model.onnx").read_bytes()
    assert (out / "canaries" / "manifest.jsonl").is_file()  # the copy keeps watching its accuracy
    words = set((out / "unigrams.txt").read_text().split())
    assert {"tropism", "lifeform", "seven", "apples"} <= words  # numbers spelled as they are said
    assert json.loads((out / "model.json").read_text())["decoder"]["lm"] == "lm.bin"
    general, domain = transcript(BUNDLED), transcript(out)
    # "tropism", which the general LM does not know, is heard with the domain's, and fewer words are wrong
    assert "tropism" not in general.split() and "tropism" in domain.split(), (general, domain)
    assert jiwer.wer(CANARY["text"], domain) < jiwer.wer(CANARY["text"], general) - 0.1, (general, domain)


def not_empty(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    return ["--model", BUNDLED, "--wordfreq", 10]


def empty_domain(tmp_path):
    (tmp_path / "empty.txt").write_text("\n ?! \n")
    return ["--domain", tmp_path / "empty.txt"]


@pytest.mark.parametrize("make_args, error", [
    (lambda tmp: ["--model", ROOT / "models", "--wordfreq", 10], "not a model directory"),
    (not_empty, "exists and is not empty"),
    (lambda tmp: ["--wordfreq", 10, "--domain-weight", 0], "--domain-weight must be at least 1"),
    (empty_domain, "no words in it"),
    (lambda tmp: [], "no text"),
])
def test_bad_arguments_are_clear_errors(tmp_path, make_args, error):
    result = lm(*make_args(tmp_path), "--out", tmp_path / "out")
    assert result.returncode != 0 and error in result.stderr
    assert not (tmp_path / "out" / "lm.bin").exists()
