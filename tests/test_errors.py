"""Bad input gets its documented status code, and the server keeps serving."""

import grpc
import numpy as np
import pytest
from conftest import SAMPLES, TEST_CONFIG
from test_recognize import heard, recognize

from ctc_asr.v1 import asr_pb2

Encoding = asr_pb2.RecognitionConfig.AudioEncoding
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def config(**kw) -> asr_pb2.RecognitionConfig:
    return asr_pb2.RecognitionConfig(**kw)


def one_second_pcm16() -> bytes:
    return np.zeros(16000, "<i2").tobytes()


UNARY_CASES = {
    "garbage bytes": (config(), b"\x13\x37garbage" * 100, INVALID, "could not decode"),
    "garbage declared WAV": (config(encoding=Encoding.WAV), b"RIFF\x00\x00" + b"x" * 100, INVALID, "decode"),
    "truncated FLAC": (config(), (SAMPLES / "phone.flac").read_bytes()[:60], INVALID, "decode"),
    "odd-length LINEAR16": (config(encoding=Encoding.LINEAR16, sample_rate_hertz=16000), b"\x00" * 3201,
                            INVALID, "whole number"),
    "sample rate 0": (config(encoding=Encoding.LINEAR16), one_second_pcm16(), INVALID, "sample_rate_hertz"),
    "sample rate 96 kHz": (config(encoding=Encoding.LINEAR16, sample_rate_hertz=96000), one_second_pcm16(),
                           INVALID, "sample_rate_hertz"),
    "empty audio": (config(encoding=Encoding.LINEAR16, sample_rate_hertz=16000), b"", INVALID, "empty"),
    "NaN samples": (config(encoding=Encoding.FLOAT32, sample_rate_hertz=16000),
                    np.full(1600, np.nan, "<f4").tobytes(), INVALID, "NaN"),
    "infinite samples": (config(encoding=Encoding.FLOAT32, sample_rate_hertz=16000),
                         np.array([0.1, np.inf] * 800, "<f4").tobytes(), INVALID, "NaN or infinite"),
    "truncated WAV header": (config(), (SAMPLES / "what_time.wav").read_bytes()[:30], INVALID, "decode"),
    "absurd sample rate": (config(encoding=Encoding.LINEAR16, sample_rate_hertz=2**31 - 1), one_second_pcm16(),
                           INVALID, "sample_rate_hertz"),
    "negative sample rate": (config(encoding=Encoding.LINEAR16, sample_rate_hertz=-16000), one_second_pcm16(),
                             INVALID, "sample_rate_hertz"),
    "channels not matching the length": (config(encoding=Encoding.LINEAR16, sample_rate_hertz=16000,
                                                 audio_channel_count=3), b"\x00" * 3202, INVALID, "whole number"),
    "channels not matching the header": (config(audio_channel_count=2), (SAMPLES / "what_time.wav").read_bytes(),
                                         INVALID, "audio_channel_count"),
    "absurd channel count": (config(encoding=Encoding.LINEAR16, sample_rate_hertz=16000, audio_channel_count=1000),
                             one_second_pcm16(), INVALID, "audio_channel_count"),
    "rate mismatching header": (config(sample_rate_hertz=8000), (SAMPLES / "what_time.wav").read_bytes(),
                                INVALID, "header"),
    "unknown language": (config(language_code="fr-FR"), (SAMPLES / "what_time.wav").read_bytes(),
                         INVALID, "language_code"),
    "too many alternatives": (config(max_alternatives=50), (SAMPLES / "what_time.wav").read_bytes(),
                              INVALID, "max_alternatives"),
    "longer than the unary limit": (config(encoding=Encoding.LINEAR16, sample_rate_hertz=16000),
                                    one_second_pcm16() * 21, grpc.StatusCode.OUT_OF_RANGE, "at most 20"),
}


@pytest.mark.parametrize("case", UNARY_CASES)
def test_bad_unary_request(stub, case):
    cfg, audio, code, words = UNARY_CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        recognize_raw(stub, cfg, audio)
    assert err.value.code() == code
    assert words in err.value.details()
    assert_still_serving(stub)


def recognize_raw(stub, cfg, audio):
    return stub.Recognize(asr_pb2.RecognizeRequest(config=cfg, audio_content=audio), timeout=30)


def assert_still_serving(stub):
    response = recognize(stub, (SAMPLES / "what_time.wav").read_bytes())
    assert heard(response.results[0].alternatives[0].transcript, "what_time.wav")


def streaming_config(**kw) -> asr_pb2.StreamingRecognizeRequest:
    cfg = asr_pb2.StreamingRecognitionConfig(
        config=asr_pb2.RecognitionConfig(encoding=kw.pop("encoding", Encoding.LINEAR16),
                                         sample_rate_hertz=kw.pop("rate", 16000)), **kw)
    return asr_pb2.StreamingRecognizeRequest(streaming_config=cfg)


def audio(data: bytes) -> asr_pb2.StreamingRecognizeRequest:
    return asr_pb2.StreamingRecognizeRequest(audio_content=data)


STREAM_CASES = {
    "audio before config": ([audio(one_second_pcm16()), streaming_config()], INVALID, "first message"),
    "no messages": ([], INVALID, "first message"),
    "config twice": ([streaming_config(), audio(one_second_pcm16()), streaming_config()], INVALID, "only be sent once"),
    "sample rate 0": ([streaming_config(rate=0), audio(one_second_pcm16())], INVALID, "sample_rate_hertz"),
    "odd total length": ([streaming_config(), audio(b"\x00" * 1001)], INVALID, "whole number"),
    "container encoding": ([streaming_config(encoding=Encoding.FLAC), audio(b"fLaC")], INVALID, "config.encoding"),
    "a message over the chunk limit": ([streaming_config(), audio(b"\x00" * (1024 * 1024 + 2))],
                                       grpc.StatusCode.OUT_OF_RANGE, "per message"),
    "longer than the stream limit": ([streaming_config()] + [audio(one_second_pcm16())] * 31,
                                     grpc.StatusCode.OUT_OF_RANGE, "30 s"),
}


@pytest.mark.parametrize("case", STREAM_CASES)
def test_bad_stream(stub, case):
    requests, code, words = STREAM_CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamingRecognize(iter(requests), timeout=30))
    assert err.value.code() == code
    assert words in err.value.details()
    assert_still_serving(stub)


def test_stream_without_audio_ends_without_results(stub):
    assert list(stub.StreamingRecognize(iter([streaming_config()]), timeout=10)) == []


def test_oversized_message_is_refused_by_the_transport(stub):
    too_big = b"\x00" * (TEST_CONFIG.max_file_bytes + 1)
    with pytest.raises(grpc.RpcError) as err:
        recognize_raw(stub, config(encoding=Encoding.LINEAR16, sample_rate_hertz=16000), too_big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(stub)
