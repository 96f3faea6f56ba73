"""The compiled beam search against the Python reference, and what a machine without it gets.

The recorded corpus (tests/data/canary_logprobs.npz) is the bundled model's output on its own
canaries (speech this project synthesized), written by
`python -m service.tools.decoder_benchmark --save-logprobs tests/data/canary_logprobs.npz`.
"""

import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import BUNDLED, ROOT
from test_recognize import heard

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.decoder.ctc import CtcDecoder, DecodeOptions, DecoderInputs
from engine.model.directory import ModelSpec
from service.tools.decoder_benchmark import load_logprobs
from service.tools.loadgen import free_port

CORPUS = Path(__file__).parent / "data" / "canary_logprobs.npz"
LM = DecodeOptions(beam_width=32, lm_weight=0.8, word_bonus=2.0, alternatives=3)
OPTIONS = {
    "lm": LM,
    "wide": DecodeOptions(**{**LM.__dict__, "beam_width": 128, "alternatives": 1}),
    "hotwords": DecodeOptions(**{**LM.__dict__, "hotwords": ("twelve fifteen", "sister", "paris"),
                                 "hotword_weight": 4.0}),
    "hotwords, no LM": DecodeOptions(**{**LM.__dict__, "use_lm": False, "hotwords": ("sister",)}),
    "other weights": DecodeOptions(**{**LM.__dict__, "lm_weight": 1.6, "word_bonus": -1.0, "beam_width": 8}),
}


def word_piece_corpus(spec: ModelSpec, clips: list[np.ndarray]) -> tuple[DecoderInputs, list[np.ndarray]]:
    """The recorded outputs recast in word pieces: each letter also as a word-start piece `▁x`
    (which takes the probability of a space before it), and a few multi-letter pieces; no
    delimiter token, as in sentencepiece vocabularies."""
    tokens = list(spec.tokens)
    space, letters = tokens.index("▁"), [i for i, t in enumerate(tokens) if t.isalpha()]
    pieces = {"▁th": "t", "ing": "i", "er": "e", "▁a": None}  # "▁a" is already a letter's word start
    vocab = [t for i, t in enumerate(tokens) if i != space] + ["▁" + tokens[i] for i in letters]
    vocab += [p for p, src in pieces.items() if src]
    out = []
    for c in clips:
        p = np.exp(c.astype(np.float64))
        cols = [p[:, i] for i in range(len(tokens)) if i != space]
        shifted = np.concatenate([p[:1, space], np.maximum(p[:-1, space], p[1:, space])])  # a space just before
        cols += [p[:, i] * shifted + 1e-6 for i in letters]
        cols += [p[:, tokens.index(src)] * 0.3 for src in pieces.values() if src]
        q = np.stack(cols, axis=1)
        out.append(np.log(q / q.sum(axis=1, keepdims=True)).astype(np.float32))
    return DecoderInputs(tuple(vocab), spec.lm, spec.unigrams, spec.frame_seconds), out


def transcript(decoder: CtcDecoder, logprobs: np.ndarray, opts: DecodeOptions, cuts: list[int]) -> list:
    """Everything a stream would see: per chunk the interim result and the word-timed partial, then the n-best."""
    state, seen = decoder.start(opts, offset=-4), []
    for start, end in zip([0] + cuts, cuts + [len(logprobs)]):
        decoder.advance(state, logprobs[start:end])
        seen.append((decoder.interim(state), decoder.partial(state)))
    return seen + [decoder.finish(state)]


def assert_same(ours, theirs, where=""):
    if isinstance(ours, float):
        assert math.isclose(ours, theirs, rel_tol=0, abs_tol=1e-4), where
    elif isinstance(ours, (tuple, list)):
        assert len(ours) == len(theirs), f"{where}: {ours} vs {theirs}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, where


@pytest.fixture(scope="module")
def corpus():
    spec = ModelSpec.load(BUNDLED)
    return spec, load_logprobs(CORPUS)


@pytest.mark.parametrize("vocabulary", ["characters", "word pieces", "characters, blank frames skipped"])
def test_native_and_python_decoders_agree_on_recorded_model_outputs(corpus, vocabulary):
    spec, clips = corpus
    if vocabulary == "word pieces":
        spec, clips = word_piece_corpus(spec, clips)
    if vocabulary.endswith("skipped"):
        spec = replace(spec, blank_skip=0.95)
    native, python = CtcDecoder(spec, "native"), CtcDecoder(spec, "python")
    assert (native.engine.name, python.engine.name) == ("native", "python")
    rng = np.random.default_rng(20)
    texts = set()
    for name, opts in OPTIONS.items():
        for i, logprobs in enumerate(clips):
            cuts = sorted(rng.choice(np.arange(1, len(logprobs)), size=rng.integers(0, 8), replace=False).tolist())
            ours, theirs = transcript(native, logprobs, opts, cuts), transcript(python, logprobs, opts, cuts)
            assert_same(ours, theirs, f"{name}, clip {i}, cuts {cuts}")
            texts.update(h.text for h in ours[-1])
    # the comparison saw real decoding: n-best lists, LM-corrected and word-piece words
    assert len(texts) > 40 and any(len(t.split()) >= 4 for t in texts)


def test_the_native_decoder_is_the_default_and_reported(stub):
    assert stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=5).decoder == "native"


def test_without_the_compiled_library_the_server_says_so_and_decodes_with_python(tmp_path):
    """A machine where `python -m engine.decoder.native.build` could not run: a copy of the code without it."""
    for package in ("engine", "service", "ctc_asr"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("_beam_search*", "__pycache__"))
    base = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1",
            "--metrics-port", "0", "--http-port", "0", "--provider", "cpu", "--model", str(BUNDLED)]
    refused = subprocess.run(base + ["--port", "0", "--decoder", "native"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0 and "the native beam search is not built" in refused.stderr
    port = free_port()
    server = subprocess.Popen(base + ["--port", str(port)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = asr_pb2_grpc.SpeechStub(channel)
            info = stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=5)
            assert info.decoder.startswith("python (native not built")
            audio = (ROOT / "samples" / "what_time.wav").read_bytes()
            result = stub.Recognize(asr_pb2.RecognizeRequest(audio_content=audio), timeout=30)
            assert heard(result.results[0].alternatives[0].transcript, "what_time.wav")
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[1]
    assert "beam search: python (native not built" in log


def test_the_service_benchmark_measures_both_engines_side_by_side(tmp_path):
    manifest = tmp_path / "clips.jsonl"  # real-speech manifests have this layout; here the sample clips
    manifest.write_text("".join(f'{{"audio": "{ROOT / "samples" / n}"}}\n' for n in ("phone.flac", "what_time.wav")))
    result = subprocess.run([sys.executable, "-m", "service.tools.benchmark", "--streams", "2", "--seconds", "3",
                             "--unary-requests", "2", "--beam-width", "16", "--decoder", "native,python",
                             "--clips", str(manifest)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| native", "| python"))]
    assert [(r[0].strip(), r[1].strip(), r[-1].strip()) for r in rows] == [("native", "2", "0"), ("python", "2", "0")]
    assert "beam 16" in result.stdout and "2 clips of" in result.stdout
    assert "native: most streams held (p95 partial <= 150 ms, no errors): " in result.stdout


def test_a_batch_decoded_in_one_call_on_two_threads_is_decoded_as_one_by_one(corpus):
    spec, clips = corpus
    decoder = CtcDecoder(spec, "native", threads=2)
    opts = [LM, OPTIONS["hotwords"], DecodeOptions(beam_width=1, lm_weight=0.8, word_bonus=2.0)]  # greedy too
    together = [decoder.start(opts[i % 3]) for i in range(len(clips))]
    alone = [decoder.start(opts[i % 3]) for i in range(len(clips))]
    for start in range(0, max(len(c) for c in clips), 8):
        decoder.advance_many(together, [c[start:start + 8] for c in clips])  # finished clips get empty chunks
        for state, c in zip(alone, clips):
            decoder.advance(state, c[start:start + 8])
        assert [decoder.interim(s) for s in together] == [decoder.interim(s) for s in alone]
    assert [decoder.finish(s) for s in together] == [decoder.finish(s) for s in alone]
    with pytest.raises(ValueError, match="log-probabilities must be"):  # checked before any is advanced
        decoder.advance_many(together[:2], [clips[0][:8], clips[1][:8, :5]])
    with pytest.raises(ValueError, match="appears twice"):
        decoder.advance_many([together[0], together[0]], [clips[0][:8], clips[0][:8]])
