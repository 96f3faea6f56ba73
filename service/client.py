"""Transcribe a file with a running server.

    python -m service.client FILE [--stream] [--reference TEXT] [--target HOST:PORT]

Unary by default (WAV/FLAC sent as is). With --stream the audio is decoded
here and sent as LINEAR16 at real-time pace, printing interim results as they
arrive and the final result at the end. --reference sends the request as a
labelled canary and prints its score.
"""

import argparse
import sys
import time
from pathlib import Path

import grpc
import soundfile as sf

from ctc_asr.v1 import asr_pb2, asr_pb2_grpc

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


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--ca", type=Path, help="PEM CA bundle: connect with TLS, trusting it")
    p.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS), with --key")
    p.add_argument("--key", type=Path, help="PEM private key of --cert")
    p.add_argument("--token", help="bearer token sent as `authorization` metadata")


def open_channel(a: argparse.Namespace) -> grpc.Channel:
    if not a.ca:
        return grpc.insecure_channel(a.target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=a.ca.read_bytes(), private_key=a.key.read_bytes() if a.key else None,
        certificate_chain=a.cert.read_bytes() if a.cert else None)
    return grpc.secure_channel(a.target, creds)


def call_metadata(a: argparse.Namespace) -> list[tuple[str, str]] | None:
    return [("authorization", f"Bearer {a.token}")] if a.token else None


def print_final(alt: asr_pb2.SpeechRecognitionAlternative) -> None:
    print(f"final: {alt.transcript} (confidence {alt.confidence:.2f})")
    for w in alt.words:
        print(f"  {w.start_time.ToTimedelta().total_seconds():6.2f}-"
              f"{w.end_time.ToTimedelta().total_seconds():6.2f}  {w.word}")


def print_score(score: asr_pb2.CanaryScore) -> None:
    print(f"canary [{score.set}]: WER {score.wer:.3f} ({score.word_errors}/{score.reference_words} words), "
          f"CER {score.cer:.3f} ({score.char_errors}/{score.reference_chars} chars)")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m service.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path, help="audio file (WAV, FLAC, or anything libsndfile reads)")
    add_connection_args(p)
    p.add_argument("--stream", action="store_true", help="stream at real-time pace with interim results")
    p.add_argument("--fast", action="store_true", help="with --stream: send as fast as possible")
    p.add_argument("--chunk-ms", type=int, default=100)
    p.add_argument("--reference", help="correct transcript: send as a labelled canary")
    p.add_argument("--canary-set", default="")
    p.add_argument("--no-lm", action="store_true", help="greedy decoding without the language model")
    p.add_argument("--words", action="store_true", help="print word time offsets")
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args()

    config = asr_pb2.RecognitionConfig(enable_word_time_offsets=a.words,
                                       decoder=asr_pb2.DecoderOptions(disable_lm=a.no_lm))
    if a.reference:
        config.canary.reference = a.reference
        config.canary.set = a.canary_set
    metadata = call_metadata(a)
    with open_channel(a) as channel:
        stub = asr_pb2_grpc.SpeechStub(channel)
        try:
            if a.stream:
                audio, rate = sf.read(a.file, dtype="int16", always_2d=True)
                config.encoding, config.sample_rate_hertz = Encoding.LINEAR16, rate
                config.audio_channel_count = audio.shape[1]
                requests = stream_requests(config, audio.tobytes(), rate, a.chunk_ms, not a.fast)
                for response in stub.StreamingRecognize(requests, timeout=a.timeout, metadata=metadata):
                    for result in response.results:
                        alt = result.alternatives[0] if result.alternatives else asr_pb2.SpeechRecognitionAlternative()
                        if result.is_final:
                            print_final(alt)
                        else:
                            print(f"partial: {alt.transcript}", flush=True)
                    if response.HasField("canary_score"):
                        print_score(response.canary_score)
            else:
                response = stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio_content=a.file.read_bytes()),
                                          timeout=a.timeout, metadata=metadata)
                for result in response.results:
                    print_final(result.alternatives[0])
                if response.HasField("canary_score"):
                    print_score(response.canary_score)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
