"""Audio beyond WAV and FLAC: G.711 telephony bytes (MULAW, ALAW) unary and
streamed, and files only ffmpeg reads (M4A/AAC), with a clear error where the
server has no ffmpeg."""

import io
import subprocess

import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import SAMPLES
from prerequisites import requires
from test_recognize import CLIPS, recognize, stream

from ctc_asr.v1 import asr_pb2
from service.session.audio import AudioError, decode_unary

Encoding = asr_pb2.RecognitionConfig.AudioEncoding
EXPECTED = CLIPS["what_time.wav"]


def g711(subtype: str) -> bytes:
    audio, rate = sf.read(SAMPLES / "what_time.wav", dtype="float32")
    out = io.BytesIO()
    sf.write(out, soxr.resample(audio, rate, 8000), 8000, format="RAW", subtype=subtype)
    return out.getvalue()


@pytest.mark.parametrize("encoding,subtype", [(Encoding.MULAW, "ULAW"), (Encoding.ALAW, "ALAW")])
def test_telephony_bytes_are_transcribed_unary_and_streamed(stub, encoding, subtype):
    data = g711(subtype)
    unary = recognize(stub, data, encoding=encoding, sample_rate_hertz=8000).results[0].alternatives[0].transcript
    assert jiwer.cer(EXPECTED, unary) <= 0.2  # 8 kHz telephony bandwidth may cost a letter or three; a bad decode, most
    streamed = stream(stub, data, 801, encoding=encoding, sample_rate_hertz=8000)
    finals = [r.alternatives[0].transcript for m in streamed for r in m.results if r.is_final]
    assert " ".join(finals) == unary


@requires("ffmpeg")
def test_files_only_ffmpeg_reads_are_transcribed(stub, tmp_path):
    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLES / "what_time.wav"), "-c:a", "aac", "-b:a", "64k",
                    str(m4a)], check=True)
    with pytest.raises(sf.LibsndfileError):
        sf.info(m4a)  # so it is ffmpeg that reads it
    response = recognize(stub, m4a.read_bytes())
    assert jiwer.wer(EXPECTED, response.results[0].alternatives[0].transcript) <= 0.2  # lossy coding
    assert response.total_billed_time.ToTimedelta().total_seconds() == pytest.approx(
        sf.info(SAMPLES / "what_time.wav").duration, abs=0.1)


def test_without_ffmpeg_other_formats_get_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(AudioError, match="need ffmpeg, which is not installed on the server"):
        decode_unary(b"\x00\x00\x00\x20ftypM4A " + bytes(100), Encoding.ENCODING_UNSPECIFIED, 0, 0, 16000, 60)
    samples, seconds = decode_unary((SAMPLES / "phone.flac").read_bytes(), Encoding.ENCODING_UNSPECIFIED, 0, 0,
                                   16000, 60)  # what libsndfile reads needs no ffmpeg
    assert seconds == pytest.approx(sf.info(SAMPLES / "phone.flac").duration) and np.isfinite(samples).all()
