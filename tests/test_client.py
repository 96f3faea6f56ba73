"""The command-line client and the server's start-up as a new user meets them: any readable
audio file, raw samples, clear one-line errors with exit codes, and a taken port refused."""

import subprocess
import sys

import jiwer
import pytest
import soundfile as sf
import soxr

from conftest import ROOT, SAMPLES

EXPECTED = "what time is it in paris"


def client(running, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "service.client", "--target", f"127.0.0.1:{running.port}", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("fmt,subtype", [("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")])
def test_unary_transcribes_compressed_files_by_decoding_them_here(running, tmp_path, fmt, subtype):
    audio, rate = sf.read(SAMPLES / "what_time.wav", dtype="float32")
    path = tmp_path / f"clip.{fmt.lower()}"
    if subtype == "OPUS":  # Opus runs at 48 kHz
        audio, rate = soxr.resample(audio, rate, 48000), 48000
    try:
        sf.write(path, audio, rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as e:
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}: {e}")
    run = client(running, str(path))
    assert run.returncode == 0, run.stderr
    transcript = run.stdout.removeprefix("final: ").split(" (confidence")[0]
    assert jiwer.wer(EXPECTED, transcript) <= 0.2  # lossy coding may cost a word of six


def test_raw_samples_with_their_encoding(running, tmp_path):
    audio, rate = sf.read(SAMPLES / "what_time.wav", dtype="int16")
    raw = tmp_path / "clip.raw"
    raw.write_bytes(audio.tobytes())
    run = client(running, str(raw), "--encoding", "LINEAR16", "--sample-rate", str(rate))
    assert run.returncode == 0 and run.stdout.startswith(f"final: {EXPECTED}"), run.stderr


def test_unreadable_inputs_are_one_line_errors_with_exit_2(running, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n")
    for path, message in ((tmp_path / "missing.wav", "no such file"), (text, "not audio this client can read")):
        run = client(running, str(path))
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_a_taken_port_is_refused_naming_it_and_no_cuda_loader_noise(running):
    for flags, message in ((["--port", str(running.port), "--metrics-port", "0", "--http-port", "0"],
                            f"--port {running.port}: cannot listen"),
                           (["--port", "0", "--metrics-port", str(running.metrics_port), "--http-port", "0"],
                            f"--metrics-port {running.metrics_port}: cannot listen"),
                           (["--port", "0", "--metrics-port", "0", "--http-port", str(running.http_port)],
                            f"--http-port {running.http_port}: cannot listen")):
        run = subprocess.run([sys.executable, "-m", "service", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1",
                              *flags], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
        assert "Traceback" not in run.stderr and "libonnxruntime_providers_cuda" not in run.stderr
