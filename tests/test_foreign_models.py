"""Bring your own model: a Hugging Face wav2vec2 directory, a NeMo-convention BPE ONNX graph
and an icefall/sherpa-onnx-convention one, each built here with random weights, go through
`python -m export` (the real command) and are served over a real gRPC channel, unary and
streamed, greedy and with the LM. Random weights say nothing of accuracy: these tests hold the
path (front-ends, buffered streaming, token mapping, word boundaries) to what the formats'
own tools say."""

import json
import shutil
import subprocess
import sys

import grpc
import pytest
import soundfile as sf
from conftest import ROOT, SAMPLES
from foreign_models import greedy_ids, icefall_onnx, nemo_bpe_onnx, wav2vec2_dir

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.decoder.ctc import CtcDecoder
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from engine.recognizer import Recognizer

BUNDLED = ROOT / "models" / "pretrained" / "default"  # its word LM serves any English vocabulary
KINDS = ("wav2vec2", "nemo_bpe", "icefall")


def export(source, out, *extra) -> str:
    run = subprocess.run([sys.executable, "-m", "export", "--ckpt", str(source), "--out", str(out),
                          "--lm-dir", str(BUNDLED), *extra], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (model directory, export's output, the format's own decoder of token ids to text)."""
    import sentencepiece as spm
    from transformers import Wav2Vec2CTCTokenizer
    root = tmp_path_factory.mktemp("foreign")
    hf = wav2vec2_dir(root / "hf")
    tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(str(hf), local_files_only=True)
    nemo, nemo_spm = nemo_bpe_onnx(root / "nemo")
    ice, ice_spm = icefall_onnx(root / "icefall")
    nemo_sp, ice_sp = (spm.SentencePieceProcessor(model_file=str(m)) for m in (nemo_spm, ice_spm))
    # icefall's ids are the sentencepiece ids shifted by the two tokens before them
    def pieces(sp, ids):  # the ids sentencepiece decodes to text (not <unk>, nor the blank past its end)
        return [i for i in ids if i < sp.get_piece_size() and not sp.is_unknown(i) and not sp.is_control(i)]
    decoders = {"wav2vec2": lambda ids: tokenizer.decode(ids, group_tokens=False, skip_special_tokens=True),
                "nemo_bpe": lambda ids: nemo_sp.decode(pieces(nemo_sp, ids)),
                "icefall": lambda ids: ice_sp.decode(pieces(ice_sp, [i - 2 for i in ids if i >= 2]))}
    out = {}
    for kind, source in zip(KINDS, (hf, nemo, ice)):
        directory = root / f"{kind}_model"
        out[kind] = (directory, export(source, directory, "--chunk-ms", "480", "--right-context-ms", "240"),
                     decoders[kind])
    return out


@pytest.fixture(scope="module")
def servers(exported):
    from dataclasses import replace

    from conftest import TEST_CONFIG, ServerThread
    started = {kind: ServerThread(replace(TEST_CONFIG, model=directory, endpointing=False))
               for kind, (directory, _, _) in exported.items()}
    yield {kind: s.running for kind, s in started.items()}
    for s in started.values():
        s.close()


def stub_of(running):
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    return asr_pb2_grpc.SpeechStub(channel)


def test_export_says_what_it_found_and_checks_parity(exported):
    hf_out = exported["wav2vec2"][1]
    assert "found: a Hugging Face Wav2Vec2ForCTC model directory" in hf_out
    assert "parity onnx_vs_transformers" in hf_out and "(ok)" in hf_out
    assert "found: an ONNX CTC graph in nemo's convention" in exported["nemo_bpe"][1]
    assert "subsampling 4 (metadata)" in exported["nemo_bpe"][1]
    assert "subsampling 4 (measured)" in exported["icefall"][1]  # no metadata: export ran the graph
    for _, text, _ in exported.values():
        assert "buffered streaming vs whole utterance" in text and "latency added: 720 ms" in text
    nemo = json.loads((exported["nemo_bpe"][0] / "model.json").read_text())
    assert nemo["features"]["kind"] == "nemo" and nemo["features"]["normalize"] == "per_feature"
    assert nemo["streaming"] == {"scheme": "buffered", "left_frames": 200, "right_frames": 24}
    ice = json.loads((exported["icefall"][0] / "model.json").read_text())
    assert ice["features"]["kind"] == "kaldi" and ice["io"]["layout"] == "channels_last"


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_transcript_is_what_the_formats_tokenizer_makes_of_the_model_output(exported, servers, kind):
    """Token mapping and word boundaries (`|` for wav2vec2, `▁` for the BPE models) against
    transformers' CTC tokenizer and sentencepiece, on the log-probs the service's own session computes."""
    directory, _, decode = exported[kind]
    audio, rate = sf.read(SAMPLES / "what_time.wav", dtype="float32")
    spec = ModelSpec.load(directory)
    recognizer = Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec, "python"))
    ids = greedy_ids(recognizer.utterance_logprobs(audio), spec.tokens.index("<blk>"))
    expected = " ".join(decode(ids).lower().split())
    response = stub_of(servers[kind]).Recognize(asr_pb2.RecognizeRequest(
        config=asr_pb2.RecognitionConfig(decoder=asr_pb2.DecoderOptions(disable_lm=True),
                                         enable_word_time_offsets=True),
        audio_content=(SAMPLES / "what_time.wav").read_bytes()), timeout=60)
    alt = response.results[0].alternatives[0]
    assert expected and alt.transcript == expected
    times = [(w.start_time.ToTimedelta().total_seconds(), w.end_time.ToTimedelta().total_seconds())
             for w in alt.words]
    assert len(times) == len(expected.split())
    assert all(s <= e for s, e in times) and times == sorted(times) and times[-1][1] <= len(audio) / rate + 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_equals_unary_with_the_language_model(servers, kind):
    """Buffered streaming cuts on the stream's own grid, so odd-sized messages give the unary result."""
    stub = stub_of(servers[kind])
    audio, rate = sf.read(SAMPLES / "phone.flac", dtype="int16")
    pcm = audio.tobytes()
    config = asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=rate)
    unary = stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio_content=pcm), timeout=60)

    def requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=config, interim_results=True))
        for i in range(0, len(pcm), 3001):
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[i:i + 3001])
    responses = list(stub.StreamingRecognize(requests(), timeout=60))
    finals = [r.alternatives[0].transcript for resp in responses for r in resp.results if r.is_final]
    assert finals == [unary.results[0].alternatives[0].transcript] and finals[0]
    assert any(not r.is_final for resp in responses for r in resp.results)  # interim results came first
    info = stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=5)
    assert info.has_language_model and info.streaming.startswith("buffered: 2000 ms left context, 480 ms chunk")
    assert info.vocabulary.startswith("characters ('|'" if kind == "wav2vec2" else "word pieces")
    assert info.frontend == {"wav2vec2": "waveform, utterance normalization per window",
                             "nemo_bpe": "nemo, per_feature normalization per window", "icefall": "kaldi"}[kind]


def without_lm(directory, out):
    """A copy of a model directory whose model.json names no language model."""
    shutil.copytree(directory, out)
    meta = json.loads((out / "model.json").read_text())
    for key in ("lm", "unigrams"):
        meta["decoder"].pop(key, None)
    (out / "model.json").write_text(json.dumps(meta))
    return out


def test_every_exported_directory_is_served_by_both_engines_with_and_without_an_lm(exported, tmp_path):
    """Word pieces with the blank last (NeMo), first (icefall), characters with `|` (wav2vec2) and
    the bundled model, each with its LM and without one, in one server per engine: both
    engines answer every model, unary and streamed, with the same transcripts."""
    from dataclasses import replace

    from conftest import TEST_CONFIG, ServerThread
    models = [(kind, directory) for kind, (directory, _, _) in exported.items()] + [("bundled", BUNDLED)]
    models += [(f"{kind}_nolm", without_lm(directory, tmp_path / f"{kind}_nolm")) for kind, directory in models]
    audio, rate = sf.read(SAMPLES / "what_time.wav", dtype="int16")
    config = dict(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=rate)
    heard = {}
    for engine in ("native", "python"):
        srv = ServerThread(replace(TEST_CONFIG, model=tuple(models), decoder=engine, endpointing=False))
        try:
            stub = stub_of(srv.running)
            for name, _ in models:
                cfg = asr_pb2.RecognitionConfig(model=name, **config)
                unary = stub.Recognize(asr_pb2.RecognizeRequest(config=cfg, audio_content=audio.tobytes()),
                                       timeout=60).results[0].alternatives[0].transcript
                requests = [asr_pb2.StreamingRecognizeRequest(
                    streaming_config=asr_pb2.StreamingRecognitionConfig(config=cfg, interim_results=True))]
                requests += [asr_pb2.StreamingRecognizeRequest(audio_content=audio[i:i + 2000].tobytes())
                             for i in range(0, len(audio), 2000)]
                streamed = [r.alternatives[0].transcript for resp in stub.StreamingRecognize(iter(requests), timeout=60)
                            for r in resp.results if r.is_final]
                info = stub.GetModelInfo(asr_pb2.GetModelInfoRequest(name=name), timeout=5)
                assert info.decoder == engine and info.has_language_model == (not name.endswith("_nolm"))
                assert streamed == [unary], (engine, name)
                heard[engine, name] = unary
        finally:
            srv.close()
    assert {name: heard["native", name] for name, _ in models} == {name: heard["python", name] for name, _ in models}
    assert heard["native", "bundled"] and heard["native", "bundled_nolm"]


def test_both_hugging_face_layouts_export(tmp_path):
    """transformers 5 saves a processor's feature-extractor settings in processor_config.json;
    transformers 4 (and many published models) in preprocessor_config.json: both export."""
    for layout in ("processor", "preprocessor"):
        source = wav2vec2_dir(tmp_path / layout, layout)
        has = {f for f in ("processor_config.json", "preprocessor_config.json") if (source / f).exists()}
        assert has == {f"{layout}_config.json"}
        assert "found: a Hugging Face Wav2Vec2ForCTC" in export(source, tmp_path / f"{layout}_model")


def test_deployment_overrides_the_contexts_and_refuses_them_for_explicit_state(exported):
    directory = exported["nemo_bpe"][0]
    spec = ModelSpec.load(directory, (1000, 320, 160))
    assert (spec.scheme.left_frames, spec.chunk_frames, spec.scheme.right_frames) == (100, 32, 16)
    assert spec.delay_frames == 4 and spec.tail_padding_ms == 320
    with pytest.raises(ValueError, match="multiples of 40 ms"):
        ModelSpec.load(directory, (None, 330, None))
    with pytest.raises(ValueError, match="buffered models only"):
        ModelSpec.load(BUNDLED, (1000, None, None))


def test_unknown_inputs_are_refused_naming_what_was_expected(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    nemo = tmp_path / "model.nemo"
    import tarfile
    (tmp_path / "model_config.yaml").write_text("target: nemo.collections.asr.models.EncDecCTCModelBPE\n")
    with tarfile.open(nemo, "w") as tar:
        tar.add(tmp_path / "model_config.yaml", arcname="./model_config.yaml")
    for path, message in ((text, "not a checkpoint of models.train"), (tmp_path, "not a Hugging Face CTC model"),
                          (nemo, "a NeMo archive (nemo.collections.asr.models.EncDecCTCModelBPE)")):
        run = subprocess.run([sys.executable, "-m", "export", "--ckpt", str(path), "--out", str(tmp_path / "o")],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_service_refuses_a_model_directory_it_cannot_serve_in_one_line(tmp_path, exported):
    for args, message in ((["--model", str(BUNDLED), "--chunk-ms", "300"], "apply to buffered models only"),
                          (["--model", str(exported["icefall"][0]), "--chunk-ms", "330"], "multiples of 40 ms"),
                          (["--model", str(tmp_path)], "no model.onnx")):
        run = subprocess.run([sys.executable, "-m", "service", "--port", "0", "--metrics-port", "0", "--http-port", "0",
                              *args],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
