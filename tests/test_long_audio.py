"""Long recordings sent whole: cut at pauses (never inside a word), their segments decoded side by
side, as accurate as their sentences sent one by one; over HTTP with OpenAI's client in every
format and through Google's LongRunningRecognize with its progress; their limits; a client that
leaves stops costing the server; a 2-hour file decoded and cut in bounded memory."""

import contextlib
import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
import tracemalloc

import grpc
import jiwer
import numpy as np
import openai
import pytest
import requests
import soundfile as sf
from conftest import ROOT, TEST_CONFIG, ServerThread
from google.cloud import speech_v1
from prerequisites import requires
from test_http import openai_client
from test_metrics import scrape, value

from ctc_asr.v1 import asr_pb2
from engine.segmenting import Segmenter, SegmentRule
from service.session.audio import open_file

RATE = 16000
SENTENCES = [
    "what time is it in paris", "set an alarm for seven thirty tomorrow morning", "call my sister at home",
    "play some jazz in the kitchen", "my phone number is three two zero zero five nine one four five seven",
    "remind me to buy milk and bread", "turn off the lights in the living room", "how is the weather in london",
    "add eggs to my shopping list", "send a message to john saying i am late", "what is the capital of france",
    "schedule a meeting on march fourteenth", "open the garage door please", "the train leaves at nine fifteen",
    "book a table for four people tonight", "pay two hundred and forty dollars", "read me the latest news",
    "turn the volume down a little", "where is the nearest pharmacy", "start a timer for ten minutes",
]
VOICES = [("flite", "slt"), ("flite", "kal16"), ("espeak-ng", "en-us")]
pytestmark = requires("espeak-ng and flite")


def say(engine: str, voice: str, text: str, tmp_path) -> np.ndarray:
    out = tmp_path / "said.wav"
    if engine == "flite":
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True)
    else:
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True, capture_output=True)
    audio, rate = sf.read(out, dtype="float32")
    import soxr
    return soxr.resample(audio, rate, RATE).astype(np.float32) if rate != RATE else audio


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[tuple[np.ndarray, str]]:
    """Every sentence in every voice: (16 kHz samples, text)."""
    tmp = tmp_path_factory.mktemp("voices")
    return [(say(engine, voice, text, tmp), text) for engine, voice in VOICES for text in SENTENCES]


def recording(clips, seconds: float, seed: int = 0, spans: list | None = None) -> tuple[np.ndarray, list[int]]:
    """The clips in shuffled rounds, joined by 0.3-1 s pauses of faint noise, to `seconds`: the
    samples and which clip came where (and into `spans` the samples each clip spans)."""
    rng = np.random.default_rng(seed)
    parts, order, length = [], [], 0
    while length < seconds * RATE:
        for i in rng.permutation(len(clips)):
            pause = (rng.standard_normal(int(RATE * rng.uniform(0.3, 1.0))) * 1e-3).astype(np.float32)
            parts += [clips[i][0], pause]
            order.append(int(i))
            if spans is not None:
                spans.append((length, length + len(clips[i][0])))
            length += len(clips[i][0]) + len(pause)
            if length >= seconds * RATE:
                break
    return np.concatenate(parts), order


def mp3(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, RATE, format="MP3", subtype="MPEG_LAYER_III")
    return out.getvalue()


def one_by_one(stub, clips) -> list[str]:
    config = asr_pb2.RecognitionConfig(encoding=asr_pb2.RecognitionConfig.FLOAT32, sample_rate_hertz=RATE)
    return [" ".join(r.alternatives[0].transcript for r in stub.Recognize(asr_pb2.RecognizeRequest(
        config=config, audio_content=clip.tobytes()), timeout=60).results) for clip, _ in clips]


def test_a_half_hour_recording_is_as_accurate_as_its_sentences_one_by_one(running, stub, clips):
    samples, order = recording(clips, 30 * 60)
    alone = one_by_one(stub, clips)
    reference = " ".join(clips[i][1] for i in order)
    started = time.perf_counter()
    long = openai_client(running, timeout=900).audio.transcriptions.create(
        model=running.speech.spec.name, file=("half_hour.mp3", mp3(samples)), response_format="verbose_json")
    seconds = time.perf_counter() - started
    print(f"30 minutes in {seconds:.0f} s ({30 * 60 / seconds:.0f}x real time)")
    separately = jiwer.process_words(reference, " ".join(alone[i] for i in order))
    together = jiwer.process_words(reference, long.text)
    # as accurate (a point of WER, for a sentence whose neighbour now shares its segment), and no
    # words dropped where segments meet (where they fall: test_segments_end_in_the_pauses...)
    assert together.wer <= separately.wer + 0.01, (together.wer, separately.wer)
    assert len(long.text.split()) >= 0.98 * sum(len(alone[i].split()) for i in order)
    assert long.duration == pytest.approx(len(samples) / RATE, abs=0.1)
    ends = [(s.start, s.end) for s in long.segments]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:])) and ends[-1][1] <= long.duration + 0.1


def test_segments_end_in_the_pauses_between_sentences_and_lose_no_sample(clips):
    spans = []
    samples, _ = recording(clips, 10 * 60, seed=5, spans=spans)
    segmenter, segments = Segmenter(RATE), []
    for start in range(0, len(samples), 10 * RATE):  # as files are decoded, 10 s at a time
        segments += segmenter.accept(samples[start:start + 10 * RATE])
    segments += segmenter.finish()
    assert np.array_equal(np.concatenate([s.samples for s in segments]), samples)
    assert [s.start for s in segments] == list(np.cumsum([0] + [len(s.samples) for s in segments[:-1]]))
    assert max(len(s.samples) for s in segments) <= SegmentRule().max_segment_s * RATE
    margin = int(0.1 * RATE)  # a clip's own quiet start and end
    inside = [s.start for s in segments if any(a + margin < s.start < b - margin for a, b in spans)]
    assert len(inside) <= 0.01 * len(segments), [round(x / RATE, 2) for x in inside]
    assert len(segments) >= 0.8 * len(spans)  # and most pauses between them end one


def test_a_90_second_file_comes_back_whole_in_every_format(running, stub, clips):
    samples, order = recording(clips[:20], 90, seed=1)
    alone = one_by_one(stub, clips[:20])
    client, model, audio = openai_client(running), running.speech.spec.name, ("talk.mp3", mp3(samples))
    text = client.audio.transcriptions.create(model=model, file=audio).text
    reference = " ".join(clips[i][1] for i in order)
    assert jiwer.wer(reference, text) <= jiwer.wer(reference, " ".join(alone[i] for i in order)) + 0.05
    verbose = client.audio.transcriptions.create(model=model, file=audio, response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])
    assert verbose.text == text and " ".join(w.word for w in verbose.words) == text
    assert all(verbose.words[i].start <= verbose.words[i + 1].start for i in range(len(verbose.words) - 1))
    srt = client.audio.transcriptions.create(model=model, file=audio, response_format="srt")
    cues = re.findall(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> [\d:,]+\n(.+)\n", srt)
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1)) and " ".join(c[5] for c in cues) == text
    assert 60 <= int(cues[-1][2]) * 60 + int(cues[-1][3]) <= 90  # the last cue is past the first minute
    vtt = client.audio.transcriptions.create(model=model, file=audio, response_format="vtt")
    assert vtt.startswith("WEBVTT") and "00:01:" in vtt


def test_long_running_recognize_reports_progress_then_the_whole_transcript(running, stub, clips):
    samples, order = recording(clips, 150, seed=2)
    alone = one_by_one(stub, clips)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        speech = speech_v1.SpeechClient(transport=speech_v1.services.speech.transports.SpeechGrpcTransport(
            channel=channel))
        config = speech_v1.RecognitionConfig(language_code="en-US")
        operation = speech.long_running_recognize(config=config, audio=speech_v1.RecognitionAudio(
            content=mp3(samples)))
        seen = []
        while not operation.done():
            seen.append(speech_v1.LongRunningRecognizeMetadata.deserialize(
                operation.operation.metadata.value).progress_percent if operation.operation.metadata.value else 0)
            time.sleep(0.1)
        result = operation.result(timeout=60)
    assert any(0 < p < 100 for p in seen) and seen == sorted(seen), seen
    said = " ".join(r.alternatives[0].transcript for r in result.results)
    reference = " ".join(clips[i][1] for i in order)
    assert jiwer.wer(reference, said) <= jiwer.wer(reference, " ".join(alone[i] for i in order)) + 0.05
    assert result.total_billed_time.total_seconds() == pytest.approx(len(samples) / RATE, abs=0.1)


def test_long_files_have_limits_that_say_which_flag(make_server, stub, clips):
    server = make_server(max_file_audio_seconds=60, max_file_bytes=1_000_000).running
    client = openai_client(server)
    samples, _ = recording(clips, 90)
    with pytest.raises(openai.APIStatusError, match="at most 60 s in one file .--max-file-audio-seconds") as err:
        client.audio.transcriptions.create(model=server.speech.spec.name, file=("long.mp3", mp3(samples)))
    assert err.value.status_code == 413
    big = io.BytesIO()
    sf.write(big, samples[:RATE * 40], RATE, format="WAV", subtype="FLOAT")  # 2.5 MB
    with pytest.raises(openai.APIStatusError, match="larger than 1000000 bytes .--max-file-bytes") as err:
        client.audio.transcriptions.create(model=server.speech.spec.name, file=("big.wav", big.getvalue()))
    assert err.value.status_code == 413
    with pytest.raises(grpc.RpcError) as err:  # Recognize takes a minute at most: longer files go the long way
        stub.Recognize(asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(), audio_content=mp3(samples)))
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and "LongRunningRecognize" in err.value.details()


def test_a_client_that_leaves_stops_costing_the_server(running, clips):
    samples, _ = recording(clips, 20 * 60, seed=3)
    url = f"http://127.0.0.1:{running.http_port}/v1/audio/transcriptions"
    before = scrape(running.metrics_port)

    def post():
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(url, files={"file": ("long.mp3", mp3(samples))}, timeout=(5, 3))
    poster = threading.Thread(target=post)
    poster.start()
    poster.join(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and value(scrape(running.metrics_port), "asr_requests_total",
                                                method="HTTPTranscriptions", code="CANCELLED") == value(
            before, "asr_requests_total", method="HTTPTranscriptions", code="CANCELLED"):
        time.sleep(0.1)
    assert value(scrape(running.metrics_port), "asr_audio_seconds_total") - value(before, "asr_audio_seconds_total") \
        < 10 * 60  # it was stopped well before the end
    cpu = time.process_time()  # the server runs in this process
    time.sleep(2)
    assert time.process_time() - cpu < 0.5  # decoding the rest would take both cores


def test_a_two_hour_file_is_decoded_and_cut_in_bounded_memory(tmp_path):
    path, rng = tmp_path / "two_hours.flac", np.random.default_rng(0)
    with sf.SoundFile(path, "w", RATE, 1, format="FLAC") as f:  # speech-like bursts and pauses, 10 s at a time
        for _ in range(720):
            block = (rng.standard_normal(10 * RATE) * 1e-3).astype(np.float32)
            for start in (0, 5 * RATE):
                block[start:start + 3 * RATE] += np.sin(np.arange(3 * RATE) * 0.06).astype(np.float32) * 0.3
            f.write(block)
    data = path.read_bytes()
    tracemalloc.start()
    audio = open_file(data, 0, 0, 0, RATE, 7200)
    segmenter, samples, longest = Segmenter(RATE, SegmentRule()), 0, 0
    for block in audio.blocks(7200):
        for segment in segmenter.accept(block):
            assert segment.start == samples  # nothing lost or repeated between segments
            samples += len(segment.samples)
            longest = max(longest, len(segment.samples))
    samples += sum(len(s.samples) for s in segmenter.finish())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert audio.seconds == 7200 and samples == 7200 * RATE
    assert longest <= SegmentRule().max_segment_s * RATE
    assert peak < 50e6  # the decoded audio alone would be 460 MB


def test_the_client_sends_a_long_file_the_long_running_way_with_a_progress_bar(running, clips, tmp_path):
    samples, order = recording(clips, 150, seed=4)
    path = tmp_path / "talk.mp3"
    path.write_bytes(mp3(samples))
    terminal, stderr = os.openpty()  # the bar is drawn where a person watches: a terminal (24 x 100)
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    shown = []

    def read():
        with contextlib.suppress(OSError):  # EIO once the client has exited
            while chunk := os.read(terminal, 4096):
                shown.append(chunk)
    reader = threading.Thread(target=read)
    reader.start()
    run = subprocess.run([sys.executable, "-m", "service.client", "--target", f"127.0.0.1:{running.port}", str(path)],
                         stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, timeout=300)
    os.close(stderr)
    reader.join(10)
    os.close(terminal)
    assert run.returncode == 0, b"".join(shown)
    finals = [line[len("final: "):].rsplit(" (confidence", 1)[0] for line in run.stdout.splitlines()
              if line.startswith("final: ")]
    reference = " ".join(clips[i][1] for i in order)
    assert len(finals) > 10 and jiwer.wer(reference, " ".join(finals)) <= 0.45  # the model's own errors
    bar = b"".join(shown).decode(errors="replace")
    assert re.search(r"talk\.mp3: +\d+%\|", bar) and "100%|" in bar, bar


def test_a_drain_tells_a_long_file_it_was_not_finished(clips):
    server = ServerThread(TEST_CONFIG)
    data = mp3(recording(clips, 15 * 60, seed=6)[0])
    url = f"http://127.0.0.1:{server.running.http_port}/v1/audio/transcriptions"
    answer = {}

    def post():
        response = requests.post(url, files={"file": ("long.mp3", data)}, timeout=60)
        answer.update(status=response.status_code, body=response.json())
    poster = threading.Thread(target=post)
    poster.start()
    deadline = time.monotonic() + 10
    while not server.running.speech.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # uploaded and decoding
    try:
        server.call(server.running.stop(1.0))  # (SIGTERM's drain, with a grace of 1 s)
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)
        server.thread.join(10)
    poster.join(30)
    assert answer["status"] == 503, answer
    message = answer["body"]["error"]["message"]
    assert "shutting down" in message and "--grace-seconds" in message
