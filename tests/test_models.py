"""Several models in one server (`--model NAME=DIR`, repeated): chosen per request over
gRPC and HTTP, listed, each batched with its own streams only."""

import subprocess
import sys

import grpc
import openai
import pytest
from conftest import BUNDLED, ROOT, SAMPLES
from test_decoder import model_directory
from test_http import openai_client
from test_metrics import scrape, value
from test_recognize import CLIPS, heard
from test_streaming import pcm

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.model.directory import ModelSpec

WAV = (SAMPLES / "what_time.wav").read_bytes()


FIRST_PASS = {"pass": "first"}  # the canary label of a model without a second pass


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    from dataclasses import replace

    from conftest import TEST_CONFIG, ServerThread
    greedy = model_directory(tmp_path_factory.mktemp("greedy"), beam_width=1)  # no LM, greedy decoding
    srv = ServerThread(replace(TEST_CONFIG, model=(("full", BUNDLED), ("greedy", greedy))))
    yield srv
    srv.close()


def test_each_request_is_decoded_by_the_model_it_names(two):
    with grpc.insecure_channel(f"127.0.0.1:{two.running.port}") as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        listed = stub.ListModels(asr_pb2.ListModelsRequest(), timeout=10).models
        assert [(m.name, m.has_language_model) for m in listed] == [("full", True), ("greedy", False)]
        assert stub.GetModelInfo(asr_pb2.GetModelInfoRequest(), timeout=10).name == "full"  # the first: the default
        assert stub.GetModelInfo(asr_pb2.GetModelInfoRequest(name="greedy"), timeout=10).name == "greedy"
        before = scrape(two.running.metrics_port)
        canary = asr_pb2.CanaryLabel(reference=CLIPS["what_time.wav"])  # counted per model in the metrics
        transcripts = {}
        for model in ("", "full", "greedy"):
            config = asr_pb2.RecognitionConfig(model=model, canary=canary)
            result = stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio_content=WAV), timeout=30).results[0]
            transcripts[model] = result.alternatives[0].transcript
        assert transcripts[""] == transcripts["full"] and heard(transcripts["full"], "what_time.wav")
        assert transcripts["greedy"] != transcripts["full"]  # greedy, without the LM, drops a letter or two

        def requests(model):
            yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
                config=asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=16000,
                                                 model=model, canary=canary)))
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm("what_time.wav"))
        finals = [r.results[0] for r in stub.StreamingRecognize(requests("greedy"), timeout=30) if r.results]
        assert finals[-1].alternatives[0].transcript == transcripts["greedy"]
        with pytest.raises(grpc.RpcError) as err:
            stub.Recognize(asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(model="nope"),
                                                    audio_content=WAV), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'full', 'greedy'" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelInfo(asr_pb2.GetModelInfoRequest(name="nope"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(two.running.metrics_port)
    scored = {model: value(after, "asr_canary_requests_total", set="default", model=model, **FIRST_PASS)
              - value(before, "asr_canary_requests_total", set="default", model=model, **FIRST_PASS)
              for model in ("full", "greedy")}
    assert scored == {"full": 2, "greedy": 2}  # "" went to the default, "full"
    for model in ("full", "greedy"):
        assert value(after, "asr_model_info", model=model, version=ModelSpec.load(BUNDLED).version,
                     provider="CPUExecutionProvider") == 1


def test_http_lists_the_models_and_takes_one_by_name(two):
    client = openai_client(two.running)
    assert [m.id for m in client.models.list()] == ["full", "greedy"]
    full = client.audio.transcriptions.create(model="full", file=(SAMPLES / "what_time.wav").open("rb"))
    greedy = client.audio.transcriptions.create(model="greedy", file=(SAMPLES / "what_time.wav").open("rb"))
    assert heard(full.text, "what_time.wav") and full.text != greedy.text
    with pytest.raises(openai.BadRequestError, match="'full', 'greedy'"):
        client.audio.transcriptions.create(model="whisper-1", file=(SAMPLES / "what_time.wav").open("rb"))


def test_two_models_of_the_same_name_are_refused_at_start():
    run = subprocess.run([sys.executable, "-m", "service", "--model", str(BUNDLED), "--model", str(BUNDLED),
                          "--port", "0", "--metrics-port", "0", "--http-port", "0", "--provider", "cpu"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "name them: --model NAME=DIR" in run.stderr.strip().splitlines()[-1]
