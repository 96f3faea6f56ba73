"""Audio bytes -> validated float32 mono samples at the model's rate.

Raw LINEAR16/FLOAT32/MULAW/ALAW may arrive in any byte chunking (`PcmStream`
keeps the partial sample between chunks); files are decoded whole, by
libsndfile (WAV, FLAC, OGG Vorbis/Opus, MP3) or, for the rest (M4A/AAC, ...),
by ffmpeg where it is installed. Every malformed input raises `AudioError`,
which the adapters answer as INVALID_ARGUMENT.
"""

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from ctc_asr.v1 import asr_pb2

Encoding = asr_pb2.RecognitionConfig.AudioEncoding
MIN_RATE, MAX_RATE = 8000, 48000
RAW_WIDTH = {Encoding.LINEAR16: 2, Encoding.FLOAT32: 4, Encoding.MULAW: 1, Encoding.ALAW: 1}
STREAM_ENCODINGS = tuple(RAW_WIDTH)
RAW_DTYPE = {Encoding.LINEAR16: "<i2", Encoding.FLOAT32: "<f4"}
G711 = {Encoding.MULAW: "ULAW", Encoding.ALAW: "ALAW"}  # libsndfile's raw subtypes
FFMPEG_SECONDS = 60  # longest an ffmpeg decode may run


class AudioError(ValueError):
    """The audio or its description is malformed."""


@dataclass(frozen=True)
class AudioFormat:
    encoding: int  # Encoding.LINEAR16 or Encoding.FLOAT32 once decoded
    sample_rate: int
    channels: int


def check_rate(rate: int, what: str) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{what} must be between {MIN_RATE} and {MAX_RATE} Hz, got {rate}")


def raw_format(encoding: int, sample_rate: int, channels: int) -> AudioFormat:
    """Validates the config of headerless audio."""
    check_rate(sample_rate, "config.sample_rate_hertz")
    if not 1 <= channels <= 8:
        raise AudioError(f"config.audio_channel_count must be between 1 and 8, got {channels}")
    return AudioFormat(encoding, sample_rate, channels)


def _to_mono(samples: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(samples)):
        raise AudioError("audio contains NaN or infinite samples")
    return samples.mean(axis=1) if samples.ndim == 2 else samples


class PcmStream:
    """Raw PCM bytes in any chunking -> mono float32 samples at the target rate."""

    def __init__(self, fmt: AudioFormat, target_rate: int) -> None:
        self.fmt = fmt
        self._frame_bytes = RAW_WIDTH[fmt.encoding] * fmt.channels
        self._partial = b""
        self._resampler = (soxr.ResampleStream(fmt.sample_rate, target_rate, 1, dtype="float32", quality="HQ")
                           if fmt.sample_rate != target_rate else None)
        self.samples_in = 0  # at the input rate, per channel

    def accept(self, data: bytes) -> np.ndarray:
        buf = self._partial + data
        usable = len(buf) - len(buf) % self._frame_bytes
        self._partial = buf[usable:]
        return self._convert(buf[:usable], last=False)

    def finish(self) -> np.ndarray:
        if self._partial:
            raise AudioError(f"audio length is not a whole number of {self._frame_bytes}-byte samples "
                             f"({len(self._partial)} bytes left over)")
        return self._convert(b"", last=True)

    def _convert(self, data: bytes, last: bool) -> np.ndarray:
        if self.fmt.encoding in G711:
            samples = sf.read(io.BytesIO(data), dtype="float32", always_2d=True, format="RAW", endian="LITTLE",
                              subtype=G711[self.fmt.encoding], samplerate=self.fmt.sample_rate,
                              channels=self.fmt.channels)[0] if data else np.zeros((0, self.fmt.channels), np.float32)
        else:
            samples = np.frombuffer(data, RAW_DTYPE[self.fmt.encoding]).reshape(-1, self.fmt.channels)
        self.samples_in += len(samples)
        if self.fmt.encoding == Encoding.LINEAR16:
            samples = samples.astype(np.float32) / 32768.0
        mono = _to_mono(samples).astype(np.float32, copy=False)
        if self._resampler is None:
            return mono
        return self._resampler.resample_chunk(mono, last=last)


NO_SAMPLES = "the audio holds no samples (a header with no audio after it)"
UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count for a file whose header leaves it open
MAX_FILE_CHANNELS = 8  # as config.audio_channel_count: what a file may make the server decode at once
BLOCK_SECONDS = 10  # a file is decoded (and resampled) this much at a time


class UnknownLength(AudioError):
    """A file libsndfile opens but cannot read to its end: ffmpeg reads it instead."""


class FileAudio:
    """An audio file opened for decoding: its length (`seconds`, as its header or its raw size
    says) and its samples at the target rate, mono float32, a block at a time (`blocks`), so that
    the decoded audio of a long file is never held whole. `close` frees what it holds."""

    def __init__(self, reader, rate: int, seconds: float, target_rate: int, closing=()) -> None:
        """`reader(frames)`: up to that many frames (n, channels) at `rate`, fewer only at the end."""
        self.seconds, self.rate, self.target_rate = seconds, rate, target_rate
        self._reader, self._closing = reader, list(closing)

    def blocks(self, max_seconds: float):
        """At most `max_seconds` + 1 s of samples (whatever a header claimed), in blocks."""
        left = int((max_seconds + 1) * self.rate)
        resampler = (soxr.ResampleStream(self.rate, self.target_rate, 1, dtype="float32", quality="HQ")
                     if self.rate != self.target_rate else None)
        try:
            while left > 0:
                wanted = min(left, BLOCK_SECONDS * self.rate)
                block = self._reader(wanted)
                left -= len(block)
                last = len(block) < wanted or left <= 0
                mono = _to_mono(block).astype(np.float32, copy=False)
                out = mono if resampler is None else resampler.resample_chunk(mono, last=last)
                if len(out):
                    yield out
                if last:
                    return
        except (sf.LibsndfileError, RuntimeError, ValueError, MemoryError) as e:
            raise AudioError(f"could not decode the audio container: {e}") from None
        finally:
            self.close()

    def close(self) -> None:
        while self._closing:
            self._closing.pop().close()


def _raw_file(data: bytes, fmt: AudioFormat, target_rate: int) -> FileAudio:
    stream = PcmStream(fmt, fmt.sample_rate)  # resampled by FileAudio, as every file is
    frame = RAW_WIDTH[fmt.encoding] * fmt.channels
    if len(data) % frame:
        raise AudioError(f"audio length is not a whole number of {frame}-byte samples "
                         f"({len(data) % frame} bytes left over)")
    at = 0

    def read(frames: int) -> np.ndarray:
        nonlocal at
        piece, at = data[at:at + frames * frame], at + frames * frame
        return stream.accept(piece).reshape(-1, 1)
    return FileAudio(read, fmt.sample_rate, len(data) / frame / fmt.sample_rate, target_rate)


def _container(source, sample_rate: int, channels: int, target_rate: int, closing=()) -> FileAudio:
    """A file libsndfile reads (`source`: its bytes or a path; `closing`: what to close after it).
    A rate or channel count set in the config must match the header."""
    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as e:
        raise AudioError(f"could not decode the audio container: {e}") from None
    try:
        frames, rate, width = f.frames, f.samplerate, f.channels
        if width > MAX_FILE_CHANNELS:
            raise AudioError(f"the audio has {width} channels; at most {MAX_FILE_CHANNELS}")
        if frames >= UNKNOWN_LENGTH:  # libsndfile cannot read a file whose header leaves its length open
            raise UnknownLength("the audio's header does not say its length")
        check_rate(rate, "the audio's sample rate")
        if sample_rate and sample_rate != rate:
            raise AudioError(f"config.sample_rate_hertz is {sample_rate} but the audio header says {rate}")
        if channels and channels != width:
            raise AudioError(f"config.audio_channel_count is {channels} but the audio has {width}")
    except AudioError:
        f.close()
        raise
    return FileAudio(lambda n: f.read(n, dtype="float32", always_2d=True), rate, frames / rate, target_rate,
                     [*closing, f])


def _ffmpeg(data: bytes, target_rate: int, max_seconds: float) -> FileAudio:
    """Any file ffmpeg reads, decoded to a temporary WAV file (mono, at target_rate, at most
    max_seconds plus one, so the caller can tell that the audio is too long): on disk, not in memory."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError("could not decode the audio: it is not WAV, FLAC, OGG or MP3, which libsndfile reads; others "
                         "(M4A/AAC, ...) need ffmpeg, which is not installed on the server. For raw audio set "
                         "config.encoding (LINEAR16, FLOAT32, MULAW, ALAW) and config.sample_rate_hertz")
    out = tempfile.NamedTemporaryFile(suffix=".wav")
    try:
        done = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-i", "pipe:0", "-t", f"{max_seconds + 1:g}",
                               "-f", "wav", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(target_rate), "-y",
                               out.name], input=data, capture_output=True, timeout=FFMPEG_SECONDS, check=False)
        if done.returncode != 0:  # (read well but empty: the caller says it holds no samples)
            reason = done.stderr.decode(errors="replace").strip().splitlines()
            raise AudioError("could not decode the audio file (not a format libsndfile or ffmpeg reads; for raw "
                             "audio set config.encoding and config.sample_rate_hertz)"
                             + (f": {reason[-1]}" if reason else ""))
        return _container(out.name, 0, 0, target_rate, closing=[out])  # the temporary file goes after the reader
    except subprocess.TimeoutExpired:
        out.close()
        raise AudioError(f"the audio file took over {FFMPEG_SECONDS} s to decode") from None
    except BaseException:
        out.close()
        raise


def open_file(data: bytes, encoding: int, sample_rate: int, channels: int, target_rate: int,
              max_seconds: float) -> FileAudio:
    """Request audio -> a `FileAudio`. Raw LINEAR16/FLOAT32/MULAW/ALAW need the config's rate;
    WAV and FLAC, when named, must be that; otherwise libsndfile tries first and ffmpeg reads
    what it cannot."""
    if not data:
        raise AudioError("audio_content is empty")
    if encoding in RAW_WIDTH:
        return _raw_file(data, raw_format(encoding, sample_rate, channels or 1), target_rate)
    try:
        return _container(io.BytesIO(data), sample_rate, channels, target_rate)
    except AudioError as e:
        named = encoding in (Encoding.WAV, Encoding.FLAC) or data.startswith((b"RIFF", b"RIFX", b"fLaC"))
        if named and not isinstance(e, UnknownLength):
            raise  # a broken WAV/FLAC says what is wrong with it, not what ffmpeg thinks
        return _ffmpeg(data, target_rate, max_seconds)


def decode_unary(data: bytes, encoding: int, sample_rate: int, channels: int, target_rate: int,
                 max_seconds: float = 3600.0) -> tuple[np.ndarray, float]:
    """Whole request audio -> (samples at target_rate, seconds of input audio). At most
    `max_seconds` + 1 s are decoded, so memory is bounded by the limit, not by what a header
    claims; a longer file's seconds are its header's, for the caller to refuse."""
    audio = open_file(data, encoding, sample_rate, channels, target_rate, max_seconds)
    blocks = list(audio.blocks(max_seconds))
    samples = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if not len(samples):  # a file's header with no samples after it: nothing to transcribe is a caller's error
        raise AudioError(NO_SAMPLES)
    decoded = len(samples) / target_rate  # a header may claim more than is there
    return samples, (max(audio.seconds, decoded) if decoded > max_seconds else decoded)
