"""A model directory with a second pass (Whisper tiny.en's decoder, `python -m export.second_pass`):
its finals are the second pass's, its interim results still the first pass's; one without serves as
before (every other test)."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import numpy as np
import pytest
import soundfile as sf
from conftest import BUNDLED, SAMPLES, TEST_CONFIG, ServerThread, place
from test_metrics import scrape, value
from test_recognize import heard, pcm16, recognize, stream

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.decoder.ctc import CtcDecoder, DecoderInputs, Hypothesis
from engine.manifest import read_audio
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession
from engine.recognizer import HALF_CLOSE, Final, Recognizer
from engine.second_pass import Utterance, load
from engine.text import spoken

# One of the bundled model's canaries (audio this project made): its first pass hears "lasso just", the
# second pass "play some jazz" (written "Play some jazz."): a final that says so is the second pass's.
JAZZ = BUNDLED / "canaries" / "unseen_family_006.flac"
JAZZ_FIRST, JAZZ_SECOND, JAZZ_WRITTEN = "lasso just", "play some jazz", "Play some jazz."
# Another, whose passes share words: "roland the city quietly" and "the road clean the city quietly".
CITY = BUNDLED / "canaries" / "unseen_family_009.flac"
PHONE = "my phone number is three two zero zero five nine one four five seven"  # phone.flac, as said


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = place(BUNDLED, tmp_path_factory.mktemp("second_pass") / "model")
    (directory / "checkpoint.pt").unlink(missing_ok=True)
    run = subprocess.run([sys.executable, "-m", "export.second_pass", "--model-dir", directory],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    # the service's runtime decodes as CTranslate2's own Whisper does, token for token
    assert run.stdout.count("greedy tokens over CTranslate2's encoding the same as its own") == 4, run.stdout
    assert json.loads((directory / "model.json").read_text())["second_pass"]["kind"] == "whisper"
    return directory


@pytest.fixture(scope="module")
def second_server(model_dir):
    srv = ServerThread(replace(TEST_CONFIG, model=str(model_dir)))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def second(second_server):
    with grpc.insecure_channel(f"127.0.0.1:{second_server.running.port}") as channel:
        yield asr_pb2_grpc.SpeechStub(channel)


@pytest.fixture(scope="module")
def recognizer(model_dir):
    spec = ModelSpec.load(model_dir)
    return Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec), second_pass=load(model_dir, spec.second_pass))


def final_of(recognizer: Recognizer, first: Hypothesis, audio: np.ndarray) -> Final:
    """A final as the recognizer gives it at half-close, for `rewrite`."""
    return Final([first], HALF_CLOSE, len(audio) / 16000, audio, recognizer.utterance_logprobs(audio))


def jazz_pcm() -> tuple[bytes, int]:
    audio, rate = sf.read(JAZZ, dtype="int16")
    return audio.tobytes(), rate


def test_finals_are_the_second_pass_and_interim_results_the_first(second, model_dir):
    pcm, rate = jazz_pcm()
    responses = stream(second, pcm, 3200, interim=True, encoding=asr_pb2.RecognitionConfig.LINEAR16,
                       sample_rate_hertz=rate)
    finals = [r.results[0].alternatives[0].transcript for r in responses if r.results and r.results[0].is_final]
    interim = [r.results[0].alternatives[0].transcript for r in responses if r.results and not r.results[0].is_final]
    # the final is the second pass's, the interim results the first pass's, as it heard them ("lasso")
    assert finals == [JAZZ_SECOND]
    assert interim and not any("jazz" in t for t in interim), interim
    written = load(model_dir, json.loads((model_dir / "model.json").read_text())["second_pass"]).transcribe(
        [Utterance(read_audio(JAZZ, 16000))])[0][0][0]
    assert written == JAZZ_WRITTEN  # as Whisper writes it


def quiet_pcm(seconds: float, rate: int) -> bytes:
    """A pause: noise at -60 dBFS (digital silence is not what a microphone sends)."""
    return (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 33).astype(np.int16).tobytes()


def early_passes(server) -> dict[str, float]:
    samples = scrape(server.running.metrics_port)
    return {o: value(samples, "asr_second_pass_early_total", model="ctc-whisper-tiny", outcome=o)
            for o in ("used", "unused")}


def written_finals(stub, pcm: bytes, rate: int) -> list[str]:
    """The finals of a stream with punctuation on: as the second pass wrote them (cased, punctuated)."""
    responses = stream(stub, pcm, 3200, interim=True, encoding=asr_pb2.RecognitionConfig.LINEAR16,
                       sample_rate_hertz=rate, enable_automatic_punctuation=True)
    return [r.results[0].alternatives[0].transcript for r in responses if r.results and r.results[0].is_final]


def test_an_utterance_gone_quiet_has_its_second_pass_before_its_endpoint(second, second_server):
    """Its second pass starts once it has been quiet for half the endpoint's silence (0.6 of 1.2 s),
    and its final, which says the same, takes that pass's text: ready at the endpoint, and the
    next utterance's interim results do not wait behind it."""
    pcm, rate = jazz_pcm()
    before = early_passes(second_server)
    finals = written_finals(second, pcm + quiet_pcm(1.6, rate) + pcm, rate)
    assert len(finals) == 2 and all(f[0].isupper() and f.endswith(".") for f in finals), finals
    after = early_passes(second_server)
    assert after["used"] >= before["used"] + 1, (before, after)


def test_a_speaker_who_goes_on_after_a_pause_has_the_utterance_heard_whole(second, second_server):
    """A pause (0.5 s and the clip's own quiet end) longer than half the endpoint's silence but shorter
    than it: the pass started early is dropped when the speaker goes on, and the final is the second
    pass over the whole utterance."""
    pcm, rate = jazz_pcm()
    before = early_passes(second_server)
    finals = written_finals(second, pcm + quiet_pcm(0.5, rate) + pcm, rate)
    assert len(finals) == 1 and finals[0][0].isupper() and finals[0].lower().count("jazz") == 2, finals
    after = early_passes(second_server)
    assert after["unused"] >= before["unused"] + 1, (before, after)


def test_punctuation_gives_the_second_pass_as_written(second):
    response = recognize(second, JAZZ.read_bytes(), enable_automatic_punctuation=True)
    assert response.results[0].alternatives[0].transcript == JAZZ_WRITTEN
    plain = recognize(second, JAZZ.read_bytes())
    assert plain.results[0].alternatives[0].transcript == JAZZ_SECOND


def test_a_model_without_a_second_pass_ignores_punctuation(stub):
    response = recognize(stub, (SAMPLES / "what_time.wav").read_bytes(), enable_automatic_punctuation=True)
    said = response.results[0].alternatives[0].transcript
    assert heard(said, "what_time.wav") and said == said.lower(), said  # the spoken form, as without the option


def test_a_declared_second_pass_without_its_files_is_refused(model_dir, tmp_path):
    broken = place(model_dir, tmp_path / "broken")
    for graph in (broken / "second_pass").glob("*.onnx"):
        graph.unlink()
    run = subprocess.run([sys.executable, "-m", "service", "--port", "0", "--metrics-port", "0", "--http-port", "0",
                          "--provider", "cpu", "--model", broken], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "the second pass cannot be loaded" in run.stderr, run.stderr[-2000:]


def test_a_second_pass_from_an_older_export_is_refused_with_the_fix(model_dir):
    settings = {**json.loads((model_dir / "model.json").read_text())["second_pass"], "window_seconds": 15.0}
    with pytest.raises(ValueError, match=r"window_seconds .*python -m export.second_pass"):
        load(model_dir, settings)


def test_utterances_decoded_together_read_as_each_alone(recognizer):
    """Utterances asked together (one with hotwords, so a prompt of another length) come out as each
    does alone: batching changes the cost, not the text or its score."""
    whisper = recognizer.second_pass
    phone, what = (read_audio(SAMPLES / name, 16000) for name in ("phone.flac", "what_time.wav"))
    asked = [Utterance(phone, proposed=("my phone number is",)), Utterance(what),
             Utterance(phone, hotwords=("My phone number is 3200591457",)), Utterance(what[:16000])]
    together = whisper.transcribe(asked)
    for alone, batched in zip((whisper.transcribe([u])[0] for u in asked), together):
        assert [t for t, _ in batched] == [t for t, _ in alone]
        assert [s for _, s in batched] == pytest.approx([s for _, s in alone], abs=1e-4)
    assert spoken(together[1][0][0]) == "what time is it in paris"


def test_finals_that_end_together_are_decoded_in_one_batch(second, second_server):
    """Four files sent at once: their finals wait for the second pass together and are decoded as
    a batch (counted in asr_second_pass_batch_utterances), each the same as alone."""
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: recognize(second, JAZZ.read_bytes()), range(4)))
    assert [r.results[0].alternatives[0].transcript for r in responses] == [JAZZ_SECOND] * 4
    samples = scrape(second_server.running.metrics_port)
    batches = value(samples, "asr_second_pass_batch_utterances_count", model="ctc-whisper-tiny")
    finals = value(samples, "asr_second_pass_batch_utterances_sum", model="ctc-whisper-tiny")
    assert finals > batches, (finals, batches)


def test_hotwords_reach_the_second_pass(second, stub):
    """The request's phrases are Whisper's prompt: a canary of Latin ("semper ubi sub ubi"), which
    the first pass misses even when asked for it, is heard with the phrase, not without."""
    audio = (BUNDLED / "canaries" / "unseen_family_004.flac").read_bytes()
    phrase = asr_pb2.SpeechContext(phrases=["semper ubi sub ubi"])
    assert recognize(stub, audio, speech_contexts=[phrase]).results[0].alternatives[0].transcript != phrase.phrases[0]
    assert recognize(second, audio).results[0].alternatives[0].transcript != phrase.phrases[0]
    assert recognize(second, audio, speech_contexts=[phrase]).results[0].alternatives[0].transcript == phrase.phrases[0]


def test_a_final_the_first_pass_is_sure_of_is_kept(recognizer):
    """Where the first pass's confidence reaches `keep_first_above` (0.9) its final stands: on the wake
    words the second pass was far worse (the model card's Experiments)."""
    audio = read_audio(JAZZ, 16000)
    first = Hypothesis(JAZZ_FIRST, 0.95, ())
    assert recognizer.rewrite(final_of(recognizer, first, audio)).hypotheses[0].text == first.text
    unsure = recognizer.rewrite(final_of(recognizer, first._replace(confidence=0.5), audio))
    assert unsure.hypotheses[0].text == JAZZ_SECOND and unsure.written == JAZZ_WRITTEN
    assert unsure.first.text == first.text


def test_many_hotwords_on_a_long_utterance_stay_within_the_decoder(model_dir, recognizer):
    """The most phrases a request may send, as a prompt, leave the text room within Whisper's 448
    positions (past them the decoder would fail the call), and an utterance longer than the second
    pass hears keeps the first pass's final."""
    whisper = load(model_dir, json.loads((model_dir / "model.json").read_text())["second_pass"])
    prompt = whisper.prompt_of(tuple(f"phrase number {i} of a hundred, each of them long enough" for i in range(100)))
    assert len(prompt) + whisper.most_tokens(len(prompt), 30.0) <= 448 and whisper.most_tokens(len(prompt), 30.0) > 200
    first = Hypothesis("what time is it in paris", 0.5, ())
    long = np.tile(read_audio(SAMPLES / "what_time.wav", 16000), 20)  # 34 s
    assert recognizer.rewrite(final_of(recognizer, first, long)).hypotheses[0] == first


def words_of(responses) -> list:
    return [w for r in responses if r.results and r.results[0].is_final for w in r.results[0].alternatives[0].words]


def test_the_second_pass_words_are_timed_where_the_first_pass_heard_them(second, stub):
    """Word times and confidences of a second-pass final come from aligning its words to the first
    pass's outputs: its words, in order, each where the first pass alone places the same word."""
    audio, rate = sf.read(CITY, dtype="int16")
    pcm = audio.tobytes()
    config = dict(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=rate, enable_word_time_offsets=True)
    responses = stream(second, pcm, 3200, **config)
    words = words_of(responses)
    said = [r.results[0].alternatives[0].transcript for r in responses if r.results and r.results[0].is_final]
    assert [w.word for w in words] == " ".join(said).split() and "road" in said[0], said
    alone = {w.word: w for w in words_of(stream(stub, pcm, 3200, **config))}
    for w in words:
        start, end = w.start_time.ToTimedelta().total_seconds(), w.end_time.ToTimedelta().total_seconds()
        assert 0 <= start < end <= len(pcm) / 2 / rate and 0 < w.confidence <= 1, w
        if w.word in ("city", "quietly"):  # heard alike by both passes
            assert start == pytest.approx(alone[w.word].start_time.ToTimedelta().total_seconds(), abs=0.1)
            assert end == pytest.approx(alone[w.word].end_time.ToTimedelta().total_seconds(), abs=0.1)
    assert all(a.end_time.ToTimedelta() <= b.start_time.ToTimedelta() for a, b in zip(words, words[1:]))


def test_canaries_are_scored_for_each_pass(second, second_server):
    """A canary on a two-pass model is scored as served (pass "second": no word error) and by its
    first pass alone (pass "first": "lasso just" for "play some jazz")."""
    response = recognize(second, JAZZ.read_bytes(), canary=asr_pb2.CanaryLabel(reference=JAZZ_SECOND, set="jazz"))
    assert response.canary_score.pass_name == "second" and response.canary_score.word_errors == 0
    samples = scrape(second_server.running.metrics_port)
    errors = {p: value(samples, "asr_canary_word_errors_total", set="jazz", model="ctc-whisper-tiny", **{"pass": p})
              for p in ("first", "second")}
    assert errors["first"] >= 2 and errors["second"] == 0, errors


def test_under_load_the_final_is_the_first_pass_flagged(model_dir):
    """A server shedding load (here: any live work passes --max-model-busy-ratio) skips the second
    pass: the final is the first pass's, flagged, and counted."""
    srv = ServerThread(replace(TEST_CONFIG, model=str(model_dir), max_model_busy_ratio=0.001))
    try:
        pcm, rate = pcm16("phone.flac")

        def paced():  # in real time: a live stream
            yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
                config=asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=rate)))
            for i in range(0, len(pcm), 3200):
                time.sleep(3200 / 2 / rate)
                yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[i:i + 3200])
        with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
            responses = list(asr_pb2_grpc.SpeechStub(channel).StreamingRecognize(paced(), timeout=60))
        finals = [r.results[0] for r in responses if r.results and r.results[0].is_final]
        assert [f.alternatives[0].transcript for f in finals] == [
            "my phone number is three two zero zero five nine one four five seven"]
        assert finals[0].second_pass_fallback
        assert value(scrape(srv.running.metrics_port), "asr_second_pass_fallbacks_total",
                     model="ctc-whisper-tiny") == 1
    finally:
        srv.close()


def unigram_lm(path, words: list[str], logp: dict[str, float], default: float):
    """A KenLM model (ARPA text, which KenLM reads too; it needs a bigram) of `words`, each with its
    log10 probability in `logp` or `default`, and the decoder that scores texts with it."""
    unigrams = ["-99\t<s>\t0", "-1.0\t</s>", "-6.0\t<unk>", *(f"{logp.get(w, default)}\t{w}" for w in sorted(words))]
    path.write_text("\n".join(["\\data\\", f"ngram 1={len(unigrams)}", "ngram 2=1", "", "\\1-grams:", *unigrams,
                                "", "\\2-grams:", "-0.5\t<s> my", "", "\\end\\", ""]))
    return path


def beside_lm(recognizer: Recognizer, model_dir, lm) -> Recognizer:
    """The same model and second pass, decoding with the LM at `lm` instead of the model's, and
    choosing among the second pass's texts without the first pass's outputs (ctc_weight 0)."""
    spec = ModelSpec.load(model_dir)
    return Recognizer(recognizer.session, CtcDecoder(DecoderInputs(spec.tokens, lm, None, spec.frame_seconds)),
                      second_pass=load(model_dir, {**spec.second_pass, "ctc_weight": 0.0}))


def test_the_language_model_chooses_among_the_second_pass_texts(model_dir, recognizer, tmp_path):
    """Among the texts the second pass found for phone.flac is "3205 91457" (spoken "three thousand
    two hundred five ..."): with an LM that finds "zero" unlikely, the final is that one; with the LM
    off (disable_lm), Whisper's own best (here the first pass's text, which it scores highest)."""
    words = [*PHONE.split(), "thousand", "hundred"]
    with_lm = beside_lm(recognizer, model_dir, unigram_lm(tmp_path / "lm.arpa", words, {"zero": -6.0}, -1.0))
    audio = read_audio(SAMPLES / "phone.flac", 16000)
    first = Hypothesis(PHONE, 0.5, ())
    assert with_lm.rewrite(final_of(with_lm, first, audio)).hypotheses[0].text == (
        "my phone number is three thousand two hundred five nine one four five seven")
    assert with_lm.rewrite(final_of(with_lm, first, audio), use_lm=False).hypotheses[0].text == PHONE


def test_the_first_pass_text_is_a_candidate_of_the_second(model_dir, recognizer, tmp_path):
    """The first pass's text is scored by Whisper's decoder beside Whisper's own (as `search` scores
    its beam: the same number for the same text); where the LM prefers it, the final is the first
    pass's words, written as a sentence."""
    whisper = recognizer.second_pass
    audio = read_audio(SAMPLES / "phone.flac", 16000)
    cross = whisper.encode(audio)
    for tokens, score in whisper.search([cross], [len(audio) / 16000], [whisper.prompt])[0][:3]:
        assert whisper.score(cross, whisper.prompt, tokens) == pytest.approx(score, abs=1e-4)
    with_lm = beside_lm(recognizer, model_dir, unigram_lm(tmp_path / "lm.arpa", PHONE.split(), {"zero": -0.01}, -2.0))
    final = with_lm.rewrite(final_of(with_lm, Hypothesis(PHONE, 0.5, ()), audio))
    assert final.hypotheses[0].text == PHONE and final.written == (
        "My phone number is three two zero zero five nine one four five seven.")


def test_the_weights_search_finds_settings_that_let_the_second_pass_mend_a_final(model_dir, tmp_path):
    """`scripts.second_pass_weights` over a clip the first pass mishears and the second pass hears:
    the first pass's WER, then a grid whose best settings give the second pass's text."""
    manifest = tmp_path / "jazz.jsonl"
    manifest.write_text(json.dumps({"audio": str(JAZZ), "text": JAZZ_SECOND}) + "\n")
    run = subprocess.run([sys.executable, "-m", "scripts.second_pass_weights", "--model", model_dir, "--set",
                          f"jazz={manifest}", "--reported", "0"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "jazz: 1 clips; first pass WER 100.0%" in run.stdout  # "lasso just"
    table = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| ")][2:]
    assert float(table[0][3]) == 0.0  # the best settings take "play some jazz"
    assert any("(the directory's)" in row[0] for row in table)
