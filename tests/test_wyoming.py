"""Wyoming (Home Assistant) on --wyoming-port, driven by the `wyoming` package's own client
against a real server: what a Home Assistant voice pipeline sends, and what a hostile client can."""

import asyncio
import json
from dataclasses import replace

import grpc
import pytest
import soundfile as sf
from conftest import SAMPLES, TEST_CONFIG, ServerThread
from test_metrics import scrape, value
from test_recognize import heard
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc

PCM = sf.read(SAMPLES / "what_time.wav", dtype="int16")[0].tobytes()
SILENCE = b"\x00\x00" * 16000 * 2


@pytest.fixture(scope="module")
def wyoming():
    srv = ServerThread(replace(TEST_CONFIG, wyoming_port=0, max_message_bytes=1_000_000))
    yield srv.running
    srv.close()


async def session(port: int, pcm: bytes = PCM, width: int = 2, **transcribe) -> list:
    """One transcribe session as Home Assistant runs it; the server's events until transcript-stop
    or error."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(**transcribe).event())
        await client.write_event(AudioStart(rate=16000, width=width, channels=1).event())
        for i in range(0, len(pcm), 3200):
            await client.write_event(AudioChunk(rate=16000, width=width, channels=1, audio=pcm[i:i + 3200]).event())
        await client.write_event(AudioStop().event())
        events = []
        while (event := await asyncio.wait_for(client.read_event(), 60)) is not None:
            events.append(event)
            if TranscriptStop.is_type(event.type) or Error.is_type(event.type):
                break
        return events


def test_describe_lists_the_models_and_transcript_streaming(wyoming):
    async def describe():
        async with AsyncTcpClient("127.0.0.1", wyoming.wyoming_port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await asyncio.wait_for(client.read_event(), 10))
    [program] = asyncio.run(describe()).asr
    assert program.supports_transcript_streaming
    assert [(m.name, m.languages) for m in program.models] == [(wyoming.speech.models.default.name, ["en"])]


def test_a_session_streams_a_chunk_per_utterance_then_the_transcript(wyoming):
    before = scrape(wyoming.metrics_port)
    events = asyncio.run(session(wyoming.wyoming_port, PCM + SILENCE + PCM, language="en"))
    kinds = [e.type for e in events]
    assert kinds[0] == TranscriptStart(language="en").event().type and kinds[-2:] == ["transcript", "transcript-stop"]
    chunks = [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]
    assert heard([c.strip() for c in chunks], "what_time.wav", "what_time.wav")  # one per utterance, as it ended
    assert Transcript.from_event(events[-2]).text == "".join(chunks)
    after = scrape(wyoming.metrics_port)
    labels = dict(method="wyoming.transcribe", code="OK")
    assert value(after, "asr_requests_total", **labels) - value(before, "asr_requests_total", **labels) == 1


@pytest.mark.parametrize("transcribe, width, says", [
    (dict(language="de"), 2, "language_code 'de' is not served"),
    (dict(name="no-such-model"), 2, "is not served; this server serves"),
    ({}, 4, "4-byte samples"),
])
def test_what_this_server_cannot_do_is_an_error_event(wyoming, transcribe, width, says):
    # Refused while the client still sends its audio: every time, the error arrives and the rest of
    # the audio is read and dropped (a read cut between an event's header and payload once made the
    # next read garbage, and the connection ended with the client's audio unread: a reset, no error).
    for _ in range(10):
        [error] = asyncio.run(session(wyoming.wyoming_port, width=width, **transcribe))
        assert Error.is_type(error.type) and says in Error.from_event(error).text
        assert Error.from_event(error).code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("header, says", [
    (b"not json\n", "not Wyoming's JSON"),
    (json.dumps({"type": "audio-chunk", "payload_length": 10**12}).encode() + b"\n", "--max-message-bytes"),
    (json.dumps({"type": "audio-chunk", "data_length": -5}).encode() + b"\n", "--max-message-bytes"),
    (b"{" + b" " * 100_000 + b"\n", "longer than"),
])
def test_a_broken_or_hostile_event_ends_its_connection_without_the_server_holding_it(wyoming, header, says):
    async def send():
        reader, writer = await asyncio.open_connection("127.0.0.1", wyoming.wyoming_port)
        writer.write(header)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        rest = await asyncio.wait_for(reader.read(), 10)  # then the server closes the connection
        writer.close()
        return json.loads(line), rest
    error, rest = asyncio.run(send())
    assert error["type"] == "error"
    assert says in json.loads(rest[:error["data_length"]])["text"]
    assert heard(Transcript.from_event(asyncio.run(session(wyoming.wyoming_port))[-2]).text, "what_time.wav")


def test_wyoming_is_off_by_default_and_not_opened_beside_bearer_tokens(running, tmp_path):
    assert running.wyoming is None and running.wyoming_port is None
    tokens = tmp_path / "tokens"
    tokens.write_text("the-secret\n")
    with pytest.raises(ValueError, match="--wyoming-without-auth"):  # the command line's error, before loading
        replace(TEST_CONFIG, wyoming_port=0, auth_tokens_file=tokens)


def test_wyomings_transcript_equals_our_own_apis_on_the_same_audio(wyoming):
    with grpc.insecure_channel(f"127.0.0.1:{wyoming.port}") as channel:
        ours = asr_pb2_grpc.SpeechStub(channel).Recognize(
            asr_pb2.RecognizeRequest(audio_content=(SAMPLES / "what_time.wav").read_bytes()), timeout=60)
    events = asyncio.run(session(wyoming.wyoming_port))
    assert Transcript.from_event(events[-2]).text == ours.results[0].alternatives[0].transcript
