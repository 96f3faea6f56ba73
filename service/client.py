"""Transcribe a file with a running server.

    python -m service.client FILE [--stream] [--reference TEXT] [--target HOST:PORT]
    python -m service.client FOLDER | 'GLOB' | FILE FILE ...

Unary by default: WAV and FLAC are sent as they are; anything else libsndfile reads
(MP3, OGG Vorbis, Opus, ...) is decoded here and sent as LINEAR16; other files (M4A/AAC,
...) are sent as they are, for the server to decode with ffmpeg; `--encoding
LINEAR16|FLOAT32|MULAW|ALAW --sample-rate N` sends a headerless file as raw samples. A file
longer than Recognize takes (over 55 s, or of a length this client cannot tell) is sent as it
is to the Google-compatible LongRunningRecognize on the same server, with a progress bar while
it is decoded (Ctrl-C cancels it on the server too). With
--stream the audio is decoded here and sent as LINEAR16 at real-time pace, printing
interim results as they arrive and each final result with the endpoint that ended it. --reference sends the request
as a labelled canary and prints its score. The call's deadline follows the audio's
length (--timeout sets it). Exit codes: 0 done, 1 the server refused or failed the
call (its status printed), 2 the file cannot be read or the arguments are wrong.
"""

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import grpc
import jiwer
import soundfile as sf
from tqdm import tqdm

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc
from engine.text import normalize

Encoding = asr_pb2.RecognitionConfig.AudioEncoding


def stream_requests(config: asr_pb2.RecognitionConfig, pcm: bytes, rate: int, chunk_ms: int, realtime: bool):
    yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(
        config=config, interim_results=True))
    step = rate * chunk_ms // 1000 * 2
    started = time.monotonic()
    for i, offset in enumerate(range(0, len(pcm), step)):
        if realtime:
            time.sleep(max(0.0, started + i * chunk_ms / 1000 - time.monotonic()))
        yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[offset:offset + step])


SENT_AS_IS = ("WAV", "FLAC")  # containers the server parses itself
LONG_SECONDS = 55.0  # Recognize takes a minute (the server's default): longer files go the long-running way
POLL_SECONDS = 0.5
RAW_WIDTH = {"LINEAR16": 2, "FLOAT32": 4, "MULAW": 1, "ALAW": 1}


class UnreadableAudio(Exception):
    pass


class CallFailed(Exception):
    """A call the server refused or failed: its status name and message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")


def recognize(channel: grpc.Channel, path: Path, config: asr_pb2.RecognitionConfig, a: argparse.Namespace,
              metadata, position: int = 0) -> asr_pb2.RecognizeResponse:
    """One file, by Recognize, or if it is long by LongRunningRecognize with a progress bar (at
    `position` among others)."""
    content, seconds = unary_audio(path, config, a.encoding, a.sample_rate)
    if 0 < seconds <= LONG_SECONDS:
        try:
            return asr_pb2_grpc.SpeechStub(channel).Recognize(asr_pb2.RecognizeRequest(
                config=config, audio_content=content), timeout=a.timeout or 60.0 + seconds, metadata=metadata)
        except grpc.RpcError as e:
            raise CallFailed(e.code().name, e.details()) from None
    if a.encoding != "auto" or a.no_lm or a.format_numbers or config.HasField("canary"):
        raise UnreadableAudio(f"{path}: over {LONG_SECONDS:g} s (or of unknown length), so sent to "
                              "LongRunningRecognize, which takes files in their own format and has no --no-lm, "
                              "--format-numbers or --reference")
    return long_running(channel, path, config, a.timeout, metadata, position)


def long_running(channel: grpc.Channel, path: Path, config: asr_pb2.RecognitionConfig, timeout: float | None,
                 metadata, position: int) -> asr_pb2.RecognizeResponse:
    """The file as it is, through google.cloud.speech.v1's LongRunningRecognize and
    google.longrunning's GetOperation (with its progress), its results as ours."""
    from google.cloud.speech_v1.types import cloud_speech
    from google.longrunning import operations_pb2
    from google.protobuf import json_format
    Request, Response = cloud_speech.LongRunningRecognizeRequest.pb(), cloud_speech.LongRunningRecognizeResponse.pb()
    Operation, Metadata = operations_pb2.Operation, cloud_speech.LongRunningRecognizeMetadata.pb()
    start = channel.unary_unary("/google.cloud.speech.v1.Speech/LongRunningRecognize",
                                request_serializer=Request.SerializeToString,
                                response_deserializer=Operation.FromString)
    get = channel.unary_unary("/google.longrunning.Operations/GetOperation",
                              request_serializer=operations_pb2.GetOperationRequest.SerializeToString,
                              response_deserializer=Operation.FromString)
    cancel = channel.unary_unary("/google.longrunning.Operations/CancelOperation",
                                 request_serializer=operations_pb2.CancelOperationRequest.SerializeToString,
                                 response_deserializer=lambda data: data)
    request = Request(config={"language_code": "en-US", "enable_word_time_offsets": config.enable_word_time_offsets},
                      audio={"content": path.read_bytes()})
    try:
        operation = start(request, timeout=60.0, metadata=metadata)
        deadline = time.monotonic() + (timeout or 7200.0)
        with tqdm(total=100, unit="%", desc=path.name, file=sys.stderr, disable=None, position=position,
                  leave=position == 0, bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]") as bar:
            try:
                while not operation.done:
                    if time.monotonic() > deadline:
                        raise CallFailed("DEADLINE_EXCEEDED", f"not done within {timeout or 7200.0:g} s")
                    time.sleep(POLL_SECONDS)
                    operation = get(operations_pb2.GetOperationRequest(name=operation.name), timeout=30.0,
                                    metadata=metadata)
                    bar.update(Metadata.FromString(operation.metadata.value).progress_percent - bar.n)
            except BaseException:  # Ctrl-C, or the deadline: the server stops decoding it too
                if not operation.done:
                    cancel(operations_pb2.CancelOperationRequest(name=operation.name), timeout=10.0, metadata=metadata)
                raise
    except grpc.RpcError as e:
        raise CallFailed(e.code().name, e.details()) from None
    if operation.HasField("error"):
        code = next((c.name for c in grpc.StatusCode if c.value[0] == operation.error.code), "UNKNOWN")
        raise CallFailed(code, operation.error.message)
    # Google's results and ours are the same messages field by field
    return json_format.ParseDict(json_format.MessageToDict(Response.FromString(operation.response.value)),
                                 asr_pb2.RecognizeResponse(), ignore_unknown_fields=True)


def read_pcm(path: Path) -> tuple[bytes, int, int, float]:
    """Any file libsndfile reads -> (LINEAR16 bytes, rate, channels, seconds)."""
    try:
        audio, rate = sf.read(path, dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise UnreadableAudio(f"{path}: not audio this client can read ({e}); for headerless samples give "
                              "--encoding and --sample-rate") from e
    return audio.tobytes(), rate, audio.shape[1], len(audio) / rate


def unary_audio(path: Path, config: asr_pb2.RecognitionConfig, encoding: str = "auto",
                sample_rate: int | None = None) -> tuple[bytes, float]:
    """The request's audio_content, with `config` set to describe it, and its duration."""
    if encoding != "auto":
        config.encoding, config.sample_rate_hertz = Encoding.Value(encoding), sample_rate
        data = path.read_bytes()
        return data, len(data) / RAW_WIDTH[encoding] / sample_rate
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return path.read_bytes(), 0.0  # the server reads more formats (ffmpeg), or says what is wrong
    if info.format in SENT_AS_IS:
        return path.read_bytes(), info.duration
    pcm, rate, channels, seconds = read_pcm(path)
    config.encoding, config.sample_rate_hertz, config.audio_channel_count = Encoding.LINEAR16, rate, channels
    return pcm, seconds


ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="localhost:50051",
                   help="HOST:PORT, or any gRPC target: dns:///NAME:PORT (every address the name resolves to, "
                        "e.g. a Kubernetes headless Service), ipv4:ADDR:PORT,ADDR:PORT")
    p.add_argument("--round-robin", action="store_true",
                   help="spread calls over every address of --target (client-side balancing), not the first only")
    p.add_argument("--ca", type=Path, help="PEM CA bundle: connect with TLS, trusting it")
    p.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS), with --key")
    p.add_argument("--key", type=Path, help="PEM private key of --cert")
    p.add_argument("--token", help="bearer token sent as `authorization` metadata")
    p.add_argument("--token-file", type=Path, help="or the first token of a tokens file (as the server's "
                                                    "--auth-tokens-file: one a line, # comments)")


def open_channel(a: argparse.Namespace) -> grpc.Channel:
    options = [("grpc.service_config", ROUND_ROBIN)] if a.round_robin else []
    if not a.ca:
        return grpc.insecure_channel(a.target, options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=a.ca.read_bytes(), private_key=a.key.read_bytes() if a.key else None,
        certificate_chain=a.cert.read_bytes() if a.cert else None)
    return grpc.secure_channel(a.target, creds, options)


def call_metadata(a: argparse.Namespace) -> list[tuple[str, str]] | None:
    token = a.token
    if a.token_file:
        token = next(t for t in (line.strip() for line in a.token_file.read_text().splitlines())
                     if t and not t.startswith("#"))
    return [("authorization", f"Bearer {token}")] if token else None


def print_final(alt: asr_pb2.SpeechRecognitionAlternative, endpoint_reason: str = "") -> None:
    ended = f"; ended by {endpoint_reason}" if endpoint_reason else ""
    print(f"final: {alt.transcript} (confidence {alt.confidence:.2f}{ended})")
    for w in alt.words:
        print(f"  {w.start_time.ToTimedelta().total_seconds():6.2f}-"
              f"{w.end_time.ToTimedelta().total_seconds():6.2f}  {w.word}")


def print_score(score: asr_pb2.CanaryScore) -> None:
    print(f"canary [{score.set}]: WER {score.wer:.3f} ({score.word_errors}/{score.reference_words} words), "
          f"CER {score.cer:.3f} ({score.char_errors}/{score.reference_chars} chars)")


def transcribe(a: argparse.Namespace, channel: grpc.Channel, config: asr_pb2.RecognitionConfig, metadata) -> int:
    """One file, unary or streamed, its results printed."""
    try:
        if not a.stream:
            response = recognize(channel, a.file, config, a, metadata)
            for result in response.results:
                print_final(result.alternatives[0])
            if response.HasField("canary_score"):
                print_score(response.canary_score)
            return 0
        pcm, rate, channels, seconds = read_pcm(a.file)
        config.encoding, config.sample_rate_hertz, config.audio_channel_count = Encoding.LINEAR16, rate, channels
    except UnreadableAudio as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CallFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    timeout = a.timeout or 60.0 + seconds  # a real-time stream takes its audio's length
    try:
        requests = stream_requests(config, pcm, rate, a.chunk_ms, not a.fast)
        for response in asr_pb2_grpc.SpeechStub(channel).StreamingRecognize(requests, timeout=timeout,
                                                                            metadata=metadata):
            for result in response.results:
                alt = result.alternatives[0] if result.alternatives else asr_pb2.SpeechRecognitionAlternative()
                if result.is_final:
                    print_final(alt, response.endpoint_reason)
                else:
                    print(f"partial: {alt.transcript}", flush=True)
            if response.HasField("canary_score"):
                print_score(response.canary_score)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".aif", ".aiff"}


def audio_files(arguments: list[str]) -> list[Path] | None:
    """Folders and glob patterns expanded (None: one plain file, the single-file mode)."""
    if len(arguments) == 1 and not glob.has_magic(arguments[0]) and not Path(arguments[0]).is_dir():
        return None
    files = []
    for arg in arguments:
        if glob.has_magic(arg):
            files += sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
        elif Path(arg).is_dir():
            files += sorted(p for p in Path(arg).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            files.append(Path(arg))
    return files


def transcribe_many(a: argparse.Namespace, files: list[Path], channel: grpc.Channel, metadata) -> int:
    """Each file unary (a long one with a bar of its own), one line each under a progress bar,
    then a summary; WER against the `NAME.txt` beside a file where there is one."""
    started, audio_seconds, failed = time.monotonic(), 0.0, 0
    references, hypotheses = [], []
    bar = tqdm(files, unit="file", file=sys.stderr, disable=None)
    for path in bar:
        config = asr_pb2.RecognitionConfig(format_numbers=a.format_numbers,
                                           decoder=asr_pb2.DecoderOptions(disable_lm=a.no_lm))
        try:
            response = recognize(channel, path, config, a, metadata, position=1)
        except (UnreadableAudio, OSError, CallFailed) as e:
            failed += 1
            bar.write(f"{path}: error: {e}", file=sys.stderr)
            continue
        transcript = " ".join(r.alternatives[0].transcript for r in response.results if r.alternatives)
        audio_seconds += response.total_billed_time.ToTimedelta().total_seconds()
        bar.write(f"{path}: {transcript}")
        if (reference := path.with_suffix(".txt")).is_file():
            references.append(normalize(reference.read_text()))
            hypotheses.append(normalize(transcript))
    elapsed = time.monotonic() - started
    print(f"{len(files)} files, {audio_seconds:.1f} s of audio in {elapsed:.1f} s "
          f"({audio_seconds / max(elapsed, 1e-9):.1f}x real time); {failed} failed", file=sys.stderr)
    if references:
        words = jiwer.process_words(references, hypotheses)
        errors = words.substitutions + words.deletions + words.insertions
        total = sum(len(r.split()) for r in references)
        print(f"WER {errors / max(total, 1):.1%} ({errors} errors / {total} words) over {len(references)} files "
              "with a reference (NAME.txt beside the audio)", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m service.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="audio file (WAV, FLAC, MP3, OGG, or what the server's ffmpeg reads); several files, "
                        "folders or glob patterns: each transcribed unary, with a progress bar and a summary")
    add_connection_args(p)
    p.add_argument("--stream", action="store_true", help="stream at real-time pace with interim results")
    p.add_argument("--fast", action="store_true", help="with --stream: send as fast as possible")
    p.add_argument("--chunk-ms", type=int, default=100)
    p.add_argument("--reference", help="correct transcript: send as a labelled canary")
    p.add_argument("--canary-set", default="")
    p.add_argument("--no-lm", action="store_true", help="greedy decoding without the language model")
    p.add_argument("--words", action="store_true", help="print word time offsets")
    p.add_argument("--format-numbers", action="store_true", help="spoken numbers as digits in finals")
    p.add_argument("--encoding", choices=["auto", *RAW_WIDTH], default="auto",
                   help="unary: auto (the file's own format) or raw samples of this encoding (with --sample-rate)")
    p.add_argument("--sample-rate", type=int, help="with --encoding: the raw samples' rate in Hz")
    p.add_argument("--timeout", type=float, help="deadline in seconds (default: 60 s plus the audio's length)")
    a = p.parse_args()
    if (a.encoding != "auto") != bool(a.sample_rate) or (a.encoding != "auto" and a.stream):
        p.error("--encoding and --sample-rate go together, for unary requests")
    files = audio_files(a.files)
    if files is not None and (a.stream or a.reference or a.encoding != "auto"):
        p.error("several files are sent unary in their own format; their references are NAME.txt beside them")
    if files == []:
        print(f"error: no audio files in {' '.join(a.files)}", file=sys.stderr)
        return 2
    for path in files or [Path(a.files[0])]:
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    with open_channel(a) as channel:
        if files is not None:
            return transcribe_many(a, files, channel, call_metadata(a))
        a.file = Path(a.files[0])
        config = asr_pb2.RecognitionConfig(enable_word_time_offsets=a.words, format_numbers=a.format_numbers,
                                           decoder=asr_pb2.DecoderOptions(disable_lm=a.no_lm))
        if a.reference:
            config.canary.reference = a.reference
            config.canary.set = a.canary_set
        return transcribe(a, channel, config, call_metadata(a))


if __name__ == "__main__":
    sys.exit(main())
