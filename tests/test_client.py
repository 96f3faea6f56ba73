"""The command-line client and the server's start-up as a new user meets them: any readable
audio file, raw samples, clear one-line errors with exit codes, and a taken port refused."""

import subprocess
import sys

import jiwer
import pytest
import soundfile as sf
import soxr
from conftest import ROOT, SAMPLES
from test_recognize import CLIPS, heard

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
    assert run.returncode == 0 and run.stdout.startswith("final: "), run.stderr
    assert heard(run.stdout.removeprefix("final: ").split(" (confidence")[0], "what_time.wav"), run.stdout


def test_unreadable_inputs_are_one_line_errors_with_exit_codes(running, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n")
    # A file this client cannot read goes to the server as it is (its ffmpeg reads more), which refuses it.
    for path, code, message in ((tmp_path / "missing.wav", 2, "no such file"),
                                (text, 1, "INVALID_ARGUMENT: could not decode"),
                                (text, 2, "not audio this client can read")):
        run = client(running, str(path), *(["--stream"] if message.startswith("not audio") else []))
        assert run.returncode == code and message in run.stderr and "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


def test_streamed_finals_say_what_ended_them_and_numbers_format(running):
    run = client(running, str(SAMPLES / "phone.flac"), "--stream", "--fast", "--format-numbers")
    assert run.returncode == 0, run.stderr
    assert "final: my phone number is 3200591457 (confidence" in run.stdout and "; ended by half_close)" in run.stdout


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


def test_a_folder_or_glob_is_transcribed_with_a_summary_and_wer_from_references(running, tmp_path):
    folder = tmp_path / "calls"
    folder.mkdir()
    for name in CLIPS:
        (folder / name).write_bytes((SAMPLES / name).read_bytes())
    (folder / "what_time.txt").write_text("What time is it in London?\n")  # one word of the 6 + 14 differs
    (folder / "phone.txt").write_text(CLIPS["phone.flac"] + "\n")
    run = client(running, str(folder))
    assert run.returncode == 0, run.stderr
    said = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert sorted(said) == sorted(str(folder / name) for name in CLIPS)
    assert all(heard(said[str(folder / name)], name) for name in CLIPS), said
    assert "2 files, " in run.stderr and "; 0 failed" in run.stderr
    words = jiwer.process_words(["what time is it in london", CLIPS["phone.flac"]],
                                [said[str(folder / name)] for name in ("what_time.wav", "phone.flac")])
    errors = words.substitutions + words.deletions + words.insertions  # at least "london"
    assert f"WER {100 * errors / 20:.1f}% ({errors} errors / 20 words) over 2 files" in run.stderr

    (folder / "broken.wav").write_bytes(b"RIFF" + bytes(40))
    run = client(running, str(folder / "*.wav"))
    assert run.returncode == 1 and "broken.wav: error: INVALID_ARGUMENT" in run.stderr
    assert run.stdout.strip() == f"{folder / 'what_time.wav'}: {said[str(folder / 'what_time.wav')]}"
    assert "2 files, " in run.stderr and "; 1 failed" in run.stderr
