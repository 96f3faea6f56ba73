"""Replacing a model while it serves: Admin.ReloadModel and SIGHUP reload beside the old one,
self-check, switch new calls, free the old; a staged candidate is promoted or rejected on the
canaries it shadow-decodes. Real servers, real channels, the prober as a CronJob runs it."""

import gc
import json
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest
from conftest import BUNDLED, ROOT, SAMPLES, TEST_CONFIG, ServerThread, place
from test_decoder import model_directory
from test_lifecycle import wait_for
from test_metrics import scrape, value
from test_recognize import heard
from test_streaming import pcm

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from service.tools.loadgen import free_port, rss_mb, start_server

WAV = (SAMPLES / "what_time.wav").read_bytes()
FILES = ("model.onnx", "model.json", "tokens.txt", "lm.bin", "unigrams.txt", "canaries")


def full_directory(path):
    """The bundled model (beam search + LM) in a directory of its own."""
    path.mkdir(exist_ok=True)
    for name in FILES:
        place(BUNDLED / name, path / name)
    return path


def greedy_directory(path):
    """The same network decoded greedily without the LM: worse (about 51% WER on the canaries, 25% with)."""
    path.mkdir(exist_ok=True)
    model_directory(path, beam_width=1)
    place(BUNDLED / "canaries", path / "canaries")
    return path


def recognize(stub) -> str:
    return stub.Recognize(asr_pb2.RecognizeRequest(audio_content=WAV), timeout=60).results[0].alternatives[0].transcript


def reload(channel, **fields) -> asr_pb2.ReloadModelResponse:
    return asr_pb2_grpc.AdminStub(channel).ReloadModel(asr_pb2.ReloadModelRequest(**fields), timeout=120)


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(directory, **overrides):
        servers.append(ServerThread(replace(TEST_CONFIG, model=(("asr", directory),), **overrides)))
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


def test_a_reload_during_20_live_streams_loses_none_and_each_stream_keeps_its_model(serve, tmp_path):
    srv = serve(full_directory(tmp_path / "full"), self_check_max_wer=0.9)
    greedy = greedy_directory(tmp_path / "greedy")
    audio, reloaded = pcm("what_time.wav"), threading.Event()
    old = weakref.ref(srv.running.speech.models.get("asr").recognizer.session)

    def requests():  # the clip at real time, then silence at real time until the reload is done
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=16000),
            interim_results=True))
        for start in range(0, len(audio), 3200):
            yield asr_pb2.StreamingRecognizeRequest(audio_content=audio[start:start + 3200])
            time.sleep(0.1)
        while not reloaded.is_set():
            yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\x00\x00" * 1600)
            time.sleep(0.1)

    def one_stream(stub):
        texts = [r.results[0].alternatives[0].transcript for r in stub.StreamingRecognize(requests(), timeout=120)
                 if r.results and r.results[0].is_final]
        return " ".join(t for t in texts if t)

    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        full = recognize(stub)
        assert heard(full, "what_time.wav")
        with ThreadPoolExecutor(20) as pool:
            streams = [pool.submit(one_stream, stub) for _ in range(20)]
            assert wait_for(lambda: srv.running.speech.admission.streams == 20, 30)
            response = reload(channel, directory=str(greedy))
            assert srv.running.speech.admission.streams == 20  # all still open when new calls switched
            reloaded.set()
            transcripts = [s.result() for s in streams]
        assert transcripts == [full] * 20  # every stream finished on the model it started with
        assert response.result == "reloaded" and not response.model.has_language_model
        assert 0 <= response.self_check_wer <= 0.9
        assert recognize(stub) != full  # a new call: the greedy model drops a letter or two
        info = asr_pb2_grpc.SpeechStub(channel).ListModels(asr_pb2.ListModelsRequest(), timeout=10).models
        assert [(m.name, m.has_language_model) for m in info] == [("asr", False)]
    samples = scrape(srv.running.metrics_port)
    assert value(samples, "asr_model_reloads_total", model="asr", result="reloaded") == 1
    assert value(samples, "asr_requests_total", method="StreamingRecognize", code="OK") == 20

    def freed():
        gc.collect()
        return old() is None
    assert wait_for(freed, 10)  # the old model's session is gone once its last stream ended


@pytest.fixture
def without_garbage_collection():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("engine", ["native", "python"])
def test_a_replaced_model_is_freed_as_soon_as_it_is_replaced(serve, tmp_path, engine, without_garbage_collection):
    """Nothing keeps a replaced model (its session, its decoder's KenLM and word prefixes) alive,
    not even until the next garbage collection, which may be long in coming: a method-level
    lru_cache in the Python engine once kept every reloaded one (13 MB a reload), and a cancelled
    batcher's task, its traceback holding the batcher, the last one (RSS +30 MB after a reload)."""
    srv = serve(full_directory(tmp_path / "full"), decoder=engine)
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        recognize(stub)  # the LM in use
        replaced = srv.running.speech.models.get("asr").recognizer
        session, engine = weakref.ref(replaced.session), weakref.ref(replaced.decoder.engine)
        del replaced
        assert reload(channel).result == "reloaded"
        assert heard(recognize(stub), "what_time.wav")
    assert wait_for(lambda: session() is None and engine() is None, 10)


def test_a_directory_that_fails_to_load_or_self_check_leaves_the_old_model_serving(serve, tmp_path):
    srv = serve(full_directory(tmp_path / "full"))  # --self-check-max-wer 0.5 by default
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in FILES[1:]:
        place(BUNDLED / name, broken / name)
    (broken / "model.onnx").write_bytes((BUNDLED / "model.onnx").read_bytes()[:100_000])  # truncated
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        full = recognize(stub)
        refused = {}
        for why, fields in {"truncated": dict(directory=str(broken)),
                            "worse than its bound": dict(directory=str(greedy_directory(tmp_path / "greedy"))),
                            "missing": dict(directory=str(tmp_path / "nowhere")),
                            "unknown name": dict(name="nope")}.items():
            with pytest.raises(grpc.RpcError) as err:
                reload(channel, **fields)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
            refused[why] = err.value.details()
            assert recognize(stub) == full, why  # the old model goes on serving
        assert "model.onnx" in refused["truncated"] and "goes on serving" in refused["truncated"]
        assert "above --self-check-max-wer 0.5" in refused["worse than its bound"]
        assert "'asr'" in refused["unknown name"]
        again = reload(channel)  # no directory: re-read its own
        assert again.result == "reloaded" and again.model.has_language_model
        assert 0.1 < again.self_check_wer < 0.35  # the model card's 25.0% on these canaries
        assert recognize(stub) == full
    samples = scrape(srv.running.metrics_port)
    assert value(samples, "asr_model_reloads_total", model="asr", result="failed") == 3  # the unknown name: no model


def test_a_directory_cannot_make_the_server_open_other_files_or_serve_bad_settings(serve, tmp_path):
    """model.json names files inside its directory only, and its decoder settings within what a request
    may ask: refused at reload (and at start-up, by the same check) with INVALID_ARGUMENT, never quoting
    a file's contents, while the old model goes on serving."""
    srv = serve(full_directory(tmp_path / "full"))
    meta = json.loads((BUNDLED / "model.json").read_text())
    (tmp_path / "secret").write_text("root:x:0:0:root:/root:/bin/bash\n")
    cases = {"absolute": {"lm": str(tmp_path / "secret")}, "outside": {"lm": "../secret"},
             "unigrams outside": {"unigrams": "../../secret"}, "NaN weight": {"lm_weight": float("nan")},
             "negative weight": {"lm_weight": -50}, "absurd bonus": {"word_bonus": 1e308}}
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        serving = recognize(stub)
        for why, decoder in cases.items():
            directory = tmp_path / why.replace(" ", "_")
            directory.mkdir()
            for name in ("model.onnx", "tokens.txt", "lm.bin", "unigrams.txt"):
                place(BUNDLED / name, directory / name)
            (directory / "model.json").write_text(json.dumps({**meta, "decoder": {**meta["decoder"], **decoder}}))
            with pytest.raises(grpc.RpcError) as err:
                reload(channel, directory=str(directory))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
            field = next(iter(decoder))
            assert f"decoder.{field}" in err.value.details() and "root:" not in err.value.details(), why
            assert recognize(stub) == serving, why
        (tmp_path / "bad_lm").mkdir()
        for name in ("model.onnx", "tokens.txt", "unigrams.txt", "model.json"):
            place(BUNDLED / name, tmp_path / "bad_lm" / name)
        (tmp_path / "bad_lm" / "lm.bin").write_text("root:x:0:0:root:/root:/bin/bash\n")  # inside, not an LM
        with pytest.raises(grpc.RpcError) as err:
            reload(channel, directory=str(tmp_path / "bad_lm"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "root:" not in err.value.details()
        assert "cannot be loaded" in err.value.details()

        linked = tmp_path / "linked"  # every name inside, but a symlink leads out
        linked.mkdir()
        for name in ("model.onnx", "model.json", "lm.bin", "unigrams.txt"):
            place(BUNDLED / name, linked / name)
        (linked / "tokens.txt").symlink_to(tmp_path / "secret")
        with pytest.raises(grpc.RpcError) as err:
            reload(channel, directory=str(linked))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside the model directory" in \
            err.value.details() and "root:" not in err.value.details() and "secret" not in err.value.details()
        (linked / "tokens.txt").unlink()
        (linked / "tokens.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")  # inside, not tokens
        with pytest.raises(grpc.RpcError) as err:
            reload(channel, directory=str(linked))
        assert "tokens.txt: line 1 is not `symbol id`" in err.value.details() and "root:" not in err.value.details()
        assert recognize(stub) == serving


def test_a_failed_or_cancelled_reload_frees_what_it_loaded_and_names_the_canary_file(serve, tmp_path, caplog):
    srv = serve(full_directory(tmp_path / "full"))
    canaries = {"not JSON": ("{", "line 1: not a JSON object"),
                "no text": ('{"audio": "a.wav"}', "line 1: not a JSON object"),
                "missing audio": ('{"audio": "nowhere.wav", "text": "x"}', "canaries/nowhere.wav is not a file"),
                "audio outside": ('{"audio": "../model.onnx", "text": "x"}', "must be a file inside canaries/"),
                "not audio": ('{"audio": "junk.wav", "text": "x"}', "canaries/junk.wav cannot be read as audio")}
    def model_threads():  # each loaded model's batcher runs on a thread of its own (this server's are "asr")
        return sum(t.name.startswith("asr-model-asr_") for t in threading.enumerate())
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.port}") as channel:
        recognize(asr_pb2_grpc.SpeechStub(channel))  # the serving model's thread is started
        threads = model_threads()
        for why, (row, message) in canaries.items():
            directory = tmp_path / why.replace(" ", "_")
            directory.mkdir()
            for name in ("model.onnx", "model.json", "tokens.txt", "lm.bin", "unigrams.txt"):
                place(BUNDLED / name, directory / name)
            (directory / "canaries").mkdir()
            (directory / "canaries" / "junk.wav").write_bytes(b"RIFF-not-really")
            (directory / "canaries" / "manifest.jsonl").write_text(row + "\n")
            with pytest.raises(grpc.RpcError) as err:
                reload(channel, directory=str(directory))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
            assert message in err.value.details(), (why, err.value.details())
        plain = tmp_path / "no_canaries"  # no canaries/: generated audio is decoded all the same
        plain.mkdir()
        for name in ("model.onnx", "model.json", "tokens.txt", "lm.bin", "unigrams.txt"):
            place(BUNDLED / name, plain / name)
        checked = reload(channel, directory=str(plain))
        assert checked.result == "reloaded" and checked.self_check_wer == -1
        assert "decoded generated audio" in checked.message
        slow = full_directory(tmp_path / "slow")  # its canaries ten times over: a self-check of many seconds
        (slow / "canaries" / "manifest.jsonl").write_text((slow / "canaries" / "manifest.jsonl").read_text() * 10)
        with pytest.raises(grpc.RpcError) as err:  # cancelled by its deadline mid-way through the self-check
            asr_pb2_grpc.AdminStub(channel).ReloadModel(asr_pb2.ReloadModelRequest(directory=str(slow)), timeout=1.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # every model loaded on the way was freed: the serving one's is the only model thread left
        assert wait_for(lambda: model_threads() <= threads, 10), [t.name for t in threading.enumerate()]
        assert heard([recognize(asr_pb2_grpc.SpeechStub(channel))], "what_time.wav")
    samples = scrape(srv.running.metrics_port)
    assert value(samples, "asr_requests_total", method="ReloadModel", code="INVALID_ARGUMENT") == len(canaries)
    assert value(samples, "asr_requests_total", method="ReloadModel", code="DEADLINE_EXCEEDED") == 1
    assert "Task was destroyed" not in caplog.text and "batcher died" not in caplog.text


def prober(port, stage, timeout=300):
    return subprocess.run([sys.executable, "-m", "service.tools.prober", "--target", f"127.0.0.1:{port}", "--fast",
                           "--stage", stage], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_a_staged_candidate_is_promoted_when_better_and_rejected_when_worse(serve, tmp_path):
    greedy = greedy_directory(tmp_path / "greedy")
    srv = serve(greedy, self_check_max_wer=0.9, promotion_min_canaries=3)
    port = srv.running.port
    better = prober(port, f"asr={full_directory(tmp_path / 'full')}")  # the prober drives it, as its CronJob does
    assert better.returncode == 0, better.stdout + better.stderr
    assert "promoted after" in better.stdout
    samples = scrape(srv.running.metrics_port)
    assert value(samples, "asr_model_promotions_total", model="asr", result="promoted") == 1
    sets = {dict(labels)["set"] for name, labels in samples if name == "asr_promotion_canaries"}
    assert sets == {"seen_voices", "unseen_family"}
    for s in sets:
        assert value(samples, "asr_promotion_canaries", model="asr", set=s) >= 3
    wer = {side: sum(value(samples, "asr_promotion_wer", model="asr", set=s, side=side) for s in sets)
           for side in ("candidate", "serving")}
    assert wer["candidate"] < wer["serving"]  # the LM's model is the better one over both sets
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        promoted = recognize(asr_pb2_grpc.SpeechStub(channel))  # the promoted model answers users now
        assert heard(promoted, "what_time.wav")

    worse = prober(port, f"asr={greedy}")
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "rejected after" in worse.stdout and "worse than the serving model" in worse.stdout
    samples = scrape(srv.running.metrics_port)
    assert value(samples, "asr_model_promotions_total", model="asr", result="rejected") == 1
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert recognize(asr_pb2_grpc.SpeechStub(channel)) == promoted  # still the better one
    assert value(samples, "asr_model_reloads_total", model="asr", result="staged") == 2


def test_sighup_rereads_every_model_directory(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    for name in FILES:
        if name != "model.json":
            place(BUNDLED / name, directory / name)
    meta = json.loads((BUNDLED / "model.json").read_text())
    (directory / "model.json").write_text(json.dumps(meta))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "service", "--model", f"asr={directory}", "--host", "127.0.0.1",
                               "--port", str(port), "--metrics-port", "0", "--http-port", "0", "--provider", "cpu"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = asr_pb2_grpc.SpeechStub(channel)
            assert stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=10).version == meta["version"]
            (directory / "model.json").write_text(json.dumps({**meta, "version": "9.9.9"}))
            server.send_signal(signal.SIGHUP)
            assert wait_for(lambda: stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=10).version == "9.9.9",
                            60)
            assert heard(recognize(stub), "what_time.wav")
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
        assert server.returncode == 0, output
        assert "SIGHUP: reloading every model" in output and "9.9.9" in output and "freed" in output
    finally:
        if server.poll() is None:
            server.kill()


def test_memory_returns_to_its_level_over_reloads():
    """A `python -m service` process reloaded again and again keeps within 10% of its RSS before
    the first reload. It grew 3-6 MB a reload without end with glibc's moving mmap threshold, and
    once by 30 MB while a replaced model waited for a garbage collection; now 138 -> 143-145 MB
    over 20 reloads (docs/api.md, "Reloading a model")."""
    server, target = start_server(["--provider", "cpu", "--model", str(BUNDLED)])
    try:
        with grpc.insecure_channel(target) as channel:
            recognize(asr_pb2_grpc.SpeechStub(channel))
            before = rss_mb(server.pid)
            after = []
            for _ in range(10):
                reload(channel)
                time.sleep(1.0)  # the old model is freed once the reload's own calls end
                after.append(rss_mb(server.pid))
        assert max(after) < before * 1.10, (before, after)
    finally:
        server.terminate()
        server.wait(30)
