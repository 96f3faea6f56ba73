"""Zero-length audio on every path gets its documented answer (docs/api.md, "Errors"): a request
that asks for a transcript of nothing (no bytes, or a file's header with no samples) is
INVALID_ARGUMENT / HTTP 400 naming why; a stream that carries no samples ends normally with
no results, as Google's does."""

import asyncio
import io
import json
import struct

import aiohttp
import grpc
import numpy as np
import openai
import pytest
import soundfile as sf
from test_errors import assert_still_serving, audio, recognize_raw, streaming_config
from test_http import STREAM_CONFIG, openai_client, ws_stream

from ctc_asr.v1 import asr_pb2

Encoding = asr_pb2.RecognitionConfig.AudioEncoding


def header_only(fmt: str, subtype: str) -> bytes:
    out = io.BytesIO()
    sf.write(out, np.zeros(0, np.float32), 16000, format=fmt, subtype=subtype)
    return out.getvalue()


def flac_header_only() -> bytes:
    """libsndfile writes nothing for a FLAC of no samples: its STREAMINFO by hand (16 kHz, mono, 16-bit, 0 samples)."""
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + ((16000 << 44) | (15 << 36)).to_bytes(8, "big") + bytes(16)
    return b"fLaC" + bytes([0x80, 0, 0, len(info)]) + info


HEADER_ONLY = {"WAV": header_only("WAV", "PCM_16"), "FLAC": flac_header_only(), "OGG": header_only("OGG", "VORBIS")}
RAW = [Encoding.LINEAR16, Encoding.FLOAT32, Encoding.MULAW, Encoding.ALAW]


def test_a_wav_header_is_44_bytes():
    assert len(HEADER_ONLY["WAV"]) == 44


@pytest.mark.parametrize("container,encoding", [("WAV", Encoding.WAV), ("WAV", 0), ("FLAC", Encoding.FLAC),
                                                ("FLAC", 0), ("OGG", 0)])  # OGG has no encoding of its own
def test_unary_header_only_files_are_invalid_argument(stub, container, encoding):
    cfg = asr_pb2.RecognitionConfig(encoding=encoding)
    with pytest.raises(grpc.RpcError) as err:
        recognize_raw(stub, cfg, HEADER_ONLY[container])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no samples" in err.value.details()
    assert_still_serving(stub)


@pytest.mark.parametrize("encoding", RAW)
def test_unary_empty_raw_audio_is_invalid_argument(stub, encoding):
    with pytest.raises(grpc.RpcError) as err:
        recognize_raw(stub, asr_pb2.RecognitionConfig(encoding=encoding, sample_rate_hertz=16000), b"")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.value.details()


@pytest.mark.parametrize("encoding", RAW)
@pytest.mark.parametrize("messages", [0, 1, 3])
def test_a_stream_without_samples_ends_ok_with_no_results(stub, encoding, messages):
    requests = [streaming_config(encoding=encoding, interim_results=True)] + [audio(b"")] * messages
    assert list(stub.StreamingRecognize(iter(requests), timeout=10)) == []


def test_openai_transcription_of_nothing_is_a_400(running):
    client = openai_client(running)
    for name, data in [("empty.wav", b""), ("header.wav", HEADER_ONLY["WAV"]), ("header.flac", HEADER_ONLY["FLAC"])]:
        with pytest.raises(openai.BadRequestError) as err:
            client.audio.transcriptions.create(model=running.speech.spec.name, file=(name, data))
        assert err.value.status_code == 400
        assert ("empty" if not data else "no samples") in str(err.value)


@pytest.mark.parametrize("end", [b"", '{"type": "end"}'])
def test_a_websocket_stream_without_samples_closes_normally_with_no_results(running, end):
    messages, code = asyncio.run(ws_stream(running, b"", STREAM_CONFIG, end=end))
    assert code == 1000 and not any(m.get("results") for m in messages)


def test_the_http_api_refuses_a_form_without_a_file(running):
    async def go():
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData({"model": "x"})
            async with session.post(f"http://127.0.0.1:{running.http_port}/v1/audio/transcriptions",
                                    data=form) as r:
                return r.status, json.loads(await r.text())
    status, body = asyncio.run(go())
    assert status == 400 and "file" in body["error"]["message"]
