"""Beam search: the reference engine's scoring is pyctcdecode's (our faster partial-word
check must give the scores its `_get_lm_beams` gives, on the bundled model's LM and real
log-probs), and a model directory's default beam width is checked when the model is loaded."""

import json
import subprocess
import sys

import pytest
import soundfile as sf
from conftest import BUNDLED, ROOT, place
from pyctcdecode.alphabet import Alphabet
from pyctcdecode.decoder import NULL_FRAMES, BeamSearchDecoderCTC

from engine.decoder.beam_search import _merge_beams
from engine.decoder.ctc import CtcDecoder, DecodeOptions
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from engine.recognizer import Recognizer


def test_beam_scores_are_pyctcdecodes():
    spec = ModelSpec.load(BUNDLED)
    decoder = CtcDecoder(spec, "python")
    labels = ["" if t == "<blk>" else " " if t == "▁" else t for t in spec.tokens]
    audio, _ = sf.read(BUNDLED / "canaries" / "unseen_family_002.flac", dtype="float32")
    logprobs = Recognizer(ModelSession(spec, "cpu"), decoder).utterance_logprobs(audio)
    lm = DecodeOptions(beam_width=32, lm_weight=0.8, word_bonus=2.0)
    for opts in (lm, DecodeOptions(**{**lm.__dict__, "hotwords": ("twelve fifteen", "sister")}),
                 DecodeOptions(**{**lm.__dict__, "use_lm": False, "hotwords": ("sister",)})):
        state = decoder.start(opts)
        decoder.advance(state, logprobs[:len(logprobs) // 2])
        search = state.search
        text = search.beams[0][0]
        # words in progress: known, a known word's start, a hotword's start, unknown, unknown and
        # longer than average; and the same words ending (scored by the LM)
        parts = ["sister", "sis", "twel", "qzx", "qzxqzxq", "remind", "x"]
        beams = search.beams + [(text, "", part, part[-1], [], (0, 1), -3.0) for part in parts]
        beams += [(text, part, "", " ", [], NULL_FRAMES, -3.0) for part in parts]
        merged = _merge_beams(beams)  # a case the search already holds is scored once
        beams = list(merged.values())
        lm_cache = dict(search.lm_cache)
        ours = search.scored(merged)
        theirs = BeamSearchDecoderCTC(Alphabet.build_alphabet(labels), search.lm)._get_lm_beams(
            beams, search.hotwords, lm_cache, {})
        assert [b[:-1] for b in ours] == [b[:-1] for b in theirs]
        # summed in another order
        assert [b[-1] for b in ours] == pytest.approx([b[-1] for b in theirs], rel=1e-12, abs=0)
        in_progress = ours[len(search.beams):len(search.beams) + len(parts)]
        assert len({b[-1] for b in in_progress}) >= 3  # penalties and bonuses were compared, not only zeros


def model_directory(path, **decoder):
    """The bundled model directory with other decoder settings in its model.json (no LM)."""
    for name in ("model.onnx", "tokens.txt"):
        if not (path / name).exists():
            place(BUNDLED / name, path / name)
    meta = json.loads((BUNDLED / "model.json").read_text())
    meta["decoder"] = {**meta["decoder"], "lm": None, "unigrams": None, **decoder}
    (path / "model.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("width", [0, 257, 12.5])
def test_a_model_directory_with_an_impossible_beam_width_is_refused(tmp_path, width):
    with pytest.raises(ValueError, match="decoder.beam_width must be a whole number from 1 to 256"):
        ModelSpec.load(model_directory(tmp_path, beam_width=width))
    # an operator's narrower or wider default is taken
    assert ModelSpec.load(model_directory(tmp_path, beam_width=64)).beam_width == 64


def test_the_decoder_benchmark_prints_both_engines_cost_scaling_and_agreement():
    result = subprocess.run([sys.executable, "-m", "service.tools.decoder_benchmark", "--limit", "3", "--beam-widths",
                             "8,16", "--threads", "1,2", "--repeat", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "3 clips" in result.stdout and "chunks of 8 output frames (320 ms)" in result.stdout
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| 8 ", "| 16 "))]
    assert [r[1].strip() for r in rows] == ["python", "native"] * 2
    for _, engine, cpu_ms, one, two, same in rows:
        assert float(cpu_ms.split()[0]) > 0 and float(one) > 0 and two.strip().endswith("x)")
        assert same.strip() == ("reference" if engine.strip() == "python" else "yes")
        assert engine.strip() == "python" or cpu_ms.strip().endswith("x less)")


@pytest.mark.parametrize("skip", [0, 1, 1.5, "0.9", True])
def test_a_model_directory_with_an_impossible_blank_skip_is_refused(tmp_path, skip):
    with pytest.raises(ValueError, match="decoder.blank_skip must be a probability between 0 and 1"):
        ModelSpec.load(model_directory(tmp_path, blank_skip=skip))
    assert ModelSpec.load(model_directory(tmp_path, blank_skip=0.9)).blank_skip == 0.9
