"""The HTTP interface as its users meet it: OpenAI's own client against
/v1/audio/transcriptions, a WebSocket client on /v1/stream, health and
metrics, all on the real server's HTTP port."""

import asyncio
import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request

import aiohttp
import numpy as np
import openai
import pytest
import soundfile as sf
from conftest import SAMPLES
from test_metrics import scrape, value
from test_recognize import heard
from test_streaming import pcm

from engine.text import format_numbers

TWO_UTTERANCES = ("what_time.wav", 2.0, "phone.flac")


def openai_client(running, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{running.http_port}/v1", api_key=kw.pop("api_key", "none"),
                         max_retries=0, **kw)


def wav_file(tmp_path, *parts) -> str:
    path = tmp_path / "speech.wav"
    sf.write(path, np.frombuffer(pcm(*parts), "<i2"), 16000, subtype="PCM_16")
    return path


def test_openai_client_gets_the_transcript_in_every_format(running, tmp_path):
    client, model = openai_client(running), running.speech.spec.name
    path = wav_file(tmp_path, *TWO_UTTERANCES)
    both = client.audio.transcriptions.create(model=model, file=path.open("rb")).text
    first, second = both.split(" my ")  # the two clips' utterances, as every format must give them
    assert heard([first, "my " + second], "what_time.wav", "phone.flac"), both
    text = client.audio.transcriptions.create(model=model, file=path.open("rb"), response_format="text")
    assert text.strip() == both

    verbose = client.audio.transcriptions.create(model=model, file=path.open("rb"), response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"], language="en",
                                                 temperature=0.0, prompt="ignored")
    assert verbose.text == both and verbose.language == "english"
    assert verbose.duration == pytest.approx(len(pcm(*TWO_UTTERANCES)) / 2 / 16000, abs=0.01)
    assert [s.text for s in verbose.segments] == [first, "my " + second]
    assert verbose.segments[0].end <= verbose.segments[1].start
    assert " ".join(w.word for w in verbose.words) == both
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts) and all(w.start <= w.end for w in verbose.words)

    srt = client.audio.transcriptions.create(model=model, file=path.open("rb"), response_format="srt")
    assert re.fullmatch(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n" + first +
                        r"\n\n2\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\nmy " + second + r"\n", srt)
    vtt = client.audio.transcriptions.create(model=model, file=path.open("rb"), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:") and "." in vtt.splitlines()[2] and "my " + second in vtt


def test_openai_streamed_transcription_sends_each_utterance_as_a_delta(running, tmp_path):
    client = openai_client(running)
    events = list(client.audio.transcriptions.create(model=running.speech.spec.name, stream=True,
                                                     file=wav_file(tmp_path, *TWO_UTTERANCES).open("rb")))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) == 2 and events[-1].type == "transcript.text.done"
    assert "".join(deltas) == events[-1].text
    assert heard([deltas[0].strip(), deltas[1].strip()], "what_time.wav", "phone.flac"), deltas


def test_numbers_are_formatted_on_request_and_words_stay_spoken(running):
    client = openai_client(running)
    result = client.audio.transcriptions.create(
        model=running.speech.spec.name, file=(SAMPLES / "phone.flac").open("rb"), response_format="verbose_json",
        timestamp_granularities=["word"], extra_body={"format_numbers": "true"})
    spoken = " ".join(w.word for w in result.words)
    assert heard(spoken, "phone.flac") and result.text == format_numbers(spoken)
    assert re.fullmatch(r"my phone number is \d{10}", result.text), result.text  # ten digits, as said


def test_openai_errors_are_openai_shaped_with_the_right_status(running, make_server, tmp_path):
    client, model = openai_client(running), running.speech.spec.name
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="whisper-1", file=(SAMPLES / "what_time.wav").open("rb"))
    assert err.value.status_code == 400 and model in err.value.message and err.value.code == "invalid_argument"
    assert err.value.param == "model"
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.transcriptions.create(model=model, file=(SAMPLES / "what_time.wav").open("rb"),
                                           response_format="xml")
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    with pytest.raises(openai.BadRequestError, match="could not decode"):
        client.audio.transcriptions.create(model=model, file=notes.open("rb"))

    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    srv = make_server(auth_tokens_file=tokens)
    with pytest.raises(openai.AuthenticationError):
        openai_client(srv.running, api_key="wrong").audio.transcriptions.create(
            model=model, file=(SAMPLES / "what_time.wav").open("rb"))
    assert heard(openai_client(srv.running, api_key="s3cret").audio.transcriptions.create(
        model=model, file=(SAMPLES / "what_time.wav").open("rb")).text, "what_time.wav")
    assert value(scrape(srv.running.metrics_port), "asr_requests_total", method="HTTPTranscriptions",
                 code="UNAUTHENTICATED") == 1


def test_health_readiness_and_models(running):
    base = f"http://127.0.0.1:{running.http_port}"
    assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
    assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200
    assert [m.id for m in openai_client(running).models.list()] == [running.speech.spec.name]
    page = urllib.request.urlopen(f"{base}/", timeout=5).read().decode()
    assert "/v1/stream" in page and "audioWorklet" in page


async def ws_stream(running, audio: bytes, config: dict, chunk: int = 3200, end=b"", query: str = ""):
    """Streams audio over /v1/stream; returns the JSON messages and the close code."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{running.http_port}/v1/stream{query}") as ws:
            await ws.send_str(json.dumps(config))
            for start in range(0, len(audio), chunk):
                await ws.send_bytes(audio[start:start + chunk])
            if isinstance(end, bytes):
                await ws.send_bytes(end)
            else:
                await ws.send_str(end)
            messages = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            return messages, ws.close_code


def ws_close_reason(running, first_message, query: str = "", audio: bytes = b"") -> tuple[int, str]:
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{running.http_port}/v1/stream{query}") as ws:
                await ws.send_str(first_message)
                if audio:
                    await ws.send_bytes(audio)
                message = await ws.receive()
                assert message.type == aiohttp.WSMsgType.CLOSE
                return message.data, message.extra
    return asyncio.run(go())


STREAM_CONFIG = {"config": {"encoding": "LINEAR16", "sampleRateHertz": 16000, "enableWordTimeOffsets": True},
                 "interimResults": True}


@pytest.mark.parametrize("end", [b"", '{"type": "end"}'])
def test_websocket_streams_interims_finals_and_events_as_grpc_json(running, end):
    before = scrape(running.metrics_port)
    messages, code = asyncio.run(ws_stream(running, pcm(*TWO_UTTERANCES), STREAM_CONFIG, end=end))
    assert code == 1000
    finals = [m for m in messages if m.get("results") and m["results"][0].get("isFinal")]
    assert heard([f["results"][0]["alternatives"][0]["transcript"] for f in finals], "what_time.wav", "phone.flac")
    assert finals[0]["endpointReason"] == "silence_after_speech" and finals[1]["endpointReason"] == "half_close"
    assert all("confidence" in w for w in finals[0]["results"][0]["alternatives"][0]["words"])
    interims = [m for m in messages if m.get("results") and not m["results"][0].get("isFinal")]
    assert interims and all(0 <= m["results"][0]["stability"] <= 1 for m in interims)
    events = [m["speechEventType"] for m in messages if "speechEventType" in m]
    assert events == ["SPEECH_ACTIVITY_BEGIN", "SPEECH_ACTIVITY_END", "SPEECH_ACTIVITY_BEGIN"]
    after = scrape(running.metrics_port)
    assert value(after, "asr_requests_total", method="WebSocketStream", code="OK") - \
        value(before, "asr_requests_total", method="WebSocketStream", code="OK") == 1


def test_websocket_errors_close_with_the_status_name(running, make_server, tmp_path):
    code, reason = ws_close_reason(running, "not json")
    assert code == 1008 and reason.startswith("INVALID_ARGUMENT: the config message")
    code, reason = ws_close_reason(running, json.dumps({"config": {"encoding": "LINEAR16"}}))
    assert code == 1008 and reason.startswith("INVALID_ARGUMENT") and "sample_rate_hertz" in reason
    _, code = asyncio.run(ws_stream(running, b"\x00" * 3200, STREAM_CONFIG, end='{"type": "more"}'))
    assert code == 1008

    # Over --max-chunk-bytes: aiohttp's own close (1009, no reason) says which limit, as other errors do.
    code, reason = ws_close_reason(running, json.dumps(STREAM_CONFIG), audio=b"\x00" * (2 << 20))
    assert code == 1008 and reason.startswith("OUT_OF_RANGE: a message over 1048576 bytes")

    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    srv = make_server(auth_tokens_file=tokens, max_concurrent_streams=1)
    messages, code = asyncio.run(ws_stream(srv.running, pcm("what_time.wav"), STREAM_CONFIG,
                                              query="?access_token=s3cret"))
    assert code == 1000 and any(m.get("results", [{}])[0].get("isFinal") for m in messages)

    async def one_too_many():  # a held stream takes the only slot
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{srv.running.http_port}/v1/stream?access_token=s3cret"
            async with session.ws_connect(url) as held:
                await held.send_str(json.dumps(STREAM_CONFIG))
                while srv.running.speech.admission.streams < 1:
                    await asyncio.sleep(0.01)
                async with session.ws_connect(url) as refused:
                    await refused.send_str(json.dumps(STREAM_CONFIG))
                    message = await refused.receive()
                    return message.data, message.extra
    code, reason = asyncio.run(one_too_many())
    assert code == 1013 and reason.startswith("RESOURCE_EXHAUSTED")

    async def unauthenticated_while_full():  # authentication comes before admission and before the upgrade
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{srv.running.http_port}/v1/stream"
            async with session.ws_connect(base + "?access_token=s3cret") as held:
                await held.send_str(json.dumps(STREAM_CONFIG))
                while srv.running.speech.admission.streams < 1:
                    await asyncio.sleep(0.01)
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await session.ws_connect(base + "?access_token=wrong")
                return err.value.status
    assert asyncio.run(unauthenticated_while_full()) == 401
    assert value(scrape(srv.running.metrics_port), "asr_requests_total", method="WebSocketStream",
                 code="UNAUTHENTICATED") == 1


def test_readiness_follows_draining(make_server):
    srv = make_server()
    base = f"http://127.0.0.1:{srv.running.http_port}"
    srv.running.speech.draining = True
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/readyz", timeout=5)
    assert err.value.code == 503
    assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
    with pytest.raises(openai.InternalServerError) as err:
        openai_client(srv.running).audio.transcriptions.create(model=srv.running.speech.spec.name,
                                                               file=(SAMPLES / "what_time.wav").open("rb"))
    assert err.value.status_code == 503


MALFORMED = {
    "wrong boundary": ("multipart/form-data; boundary=abc",
                       b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
                       b'RIFF\r\n--xyz--\r\n'),
    "no boundary": ("multipart/form-data", b"--xyz\r\n\r\n"),
    "truncated": ("multipart/form-data; boundary=abc",
                  b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'),
    "garbage": ("multipart/form-data; boundary=abc", b"\x00\x01garbage" * 10),
    "empty": ("multipart/form-data; boundary=abc", b""),
    "100 KB filename": ("multipart/form-data; boundary=abc", b'--abc\r\nContent-Disposition: form-data; name="file"; '
                        b'filename="' + b"a" * 100_000 + b'"\r\n\r\nRIFF\r\n--abc--\r\n'),
}


def test_malformed_forms_are_a_400_and_a_client_gone_mid_upload_is_cancelled(running, caplog):
    url = f"http://127.0.0.1:{running.http_port}/v1/audio/transcriptions"
    before = scrape(running.metrics_port)
    for why, (content_type, body) in MALFORMED.items():
        request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 400, why
        assert json.loads(err.value.read())["error"]["type"] == "invalid_request_error", why
    with socket.create_connection(("127.0.0.1", running.http_port)) as client:  # announces 1 MB, sends 1 KB, leaves
        client.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                       b"Content-Type: multipart/form-data; boundary=abc\r\n\r\n--abc\r\n" + b"x" * 1000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and value(scrape(running.metrics_port), "asr_requests_total",
                                                method="HTTPTranscriptions", code="CANCELLED") == value(
            before, "asr_requests_total", method="HTTPTranscriptions", code="CANCELLED"):
        time.sleep(0.1)
    after = scrape(running.metrics_port)
    counts = {code: value(after, "asr_requests_total", method="HTTPTranscriptions", code=code)
              - value(before, "asr_requests_total", method="HTTPTranscriptions", code=code)
              for code in ("INVALID_ARGUMENT", "CANCELLED", "INTERNAL")}
    assert counts == {"INVALID_ARGUMENT": len(MALFORMED), "CANCELLED": 1, "INTERNAL": 0}
    assert "Traceback" not in caplog.text and "HTTPTranscriptions failed" not in caplog.text


def test_a_streamed_transcription_that_fails_says_so_inside_its_stream(running):
    """stream=true: once the event stream has begun, an undecodable file is an error event in it
    (OpenAI's shape), never a second HTTP response inside the first; it counts as INVALID_ARGUMENT."""
    async def go():
        form = aiohttp.FormData({"stream": "true"})
        form.add_field("file", b"\x13\x37 not audio" * 50, filename="notes.wav")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.post(f"http://127.0.0.1:{running.http_port}/v1/audio/transcriptions", data=form) as r:
                return r.status, r.headers["Content-Type"], await r.text()
    before = scrape(running.metrics_port)
    status, content_type, body = asyncio.run(go())
    assert status == 200 and content_type.startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    assert len(events) == 1 and events[0]["error"]["code"] == "invalid_argument", body
    assert "HTTP/1.1" not in body
    after = scrape(running.metrics_port)
    assert value(after, "asr_requests_total", method="HTTPTranscriptions", code="INVALID_ARGUMENT") - \
        value(before, "asr_requests_total", method="HTTPTranscriptions", code="INVALID_ARGUMENT") == 1


def test_a_token_offered_as_a_websocket_subprotocol_never_reaches_the_log(running, caplog):
    async def offer():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{running.http_port}/v1/stream",
                                          protocols=("Bearer", "s3cret-token-A")) as ws:
                await ws.send_str(json.dumps(STREAM_CONFIG))
                await ws.send_bytes(b"")
                return [m async for m in ws]
    with caplog.at_level(logging.DEBUG):
        asyncio.run(offer())
    assert "Client protocols" in caplog.text and "redacted" in caplog.text  # aiohttp still says it
    assert "s3cret-token-A" not in caplog.text
