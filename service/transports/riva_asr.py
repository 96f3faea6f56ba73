"""NVIDIA Riva ASR (`nvidia.riva.asr.RivaSpeechRecognition`) on the gRPC port, so that Riva's
clients (`nvidia-riva-client`'s `ASRService` and its scripts) talk to this server unchanged: its
messages mapped onto ours (the field table is docs/protocols.md), the calls served by
`service.session.speech` as ours are. The message classes and the servicer's base are the
`nvidia-riva-client` package's own generated code."""

from riva.client.proto import riva_asr_pb2 as riva
from riva.client.proto import riva_asr_pb2_grpc
from riva.client.proto.riva_audio_pb2 import AudioEncoding

from ctc_asr.v1 import asr_pb2
from engine.decoder.ctc import Hypothesis
from service.errors import ServiceError, Status
from service.session.events import FinalResult, InterimResult
from service.session.speech import Speech
from service.transports.grpc_api import abort, audio_messages, caller, check_size, deadline_passed, streaming_config
from service.transports.messages import model_info

SERVICE = riva.DESCRIPTOR.services_by_name["RivaSpeechRecognition"].full_name
METHODS = {m.name: f"riva.{m.name}" for m in riva.DESCRIPTOR.services_by_name["RivaSpeechRecognition"].methods}

OURS = asr_pb2.RecognitionConfig.AudioEncoding
ENCODINGS = {AudioEncoding.ENCODING_UNSPECIFIED: OURS.ENCODING_UNSPECIFIED, AudioEncoding.LINEAR_PCM: OURS.LINEAR16,
             AudioEncoding.FLAC: OURS.FLAC, AudioEncoding.MULAW: OURS.MULAW, AudioEncoding.ALAW: OURS.ALAW}


def _refuse(field: str, why: str):
    raise ServiceError(Status.INVALID_ARGUMENT, f"config.{field}: {why}")


def our_config(c: riva.RecognitionConfig, audio: bytes = b"") -> asr_pb2.RecognitionConfig:
    """Riva's RecognitionConfig as ours: what this server cannot do is refused by field name, what
    does not change the words is ignored (docs/protocols.md). A whole file sent as LINEAR_PCM with
    its WAV header (Riva's offline scripts send the file) is read as the WAV file it is."""
    if c.encoding not in ENCODINGS:
        _refuse("encoding", f"{AudioEncoding.Name(c.encoding)} is not supported here; send LINEAR_PCM, FLAC, "
                "MULAW or ALAW")
    if c.enable_separate_recognition_per_channel:
        _refuse("enable_separate_recognition_per_channel", "not supported; channels are mixed to one")
    if c.HasField("diarization_config") and c.diarization_config.enable_speaker_diarization:
        _refuse("diarization_config", "speaker diarization is not supported")
    wav = c.encoding == AudioEncoding.LINEAR_PCM and audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    return asr_pb2.RecognitionConfig(
        encoding=OURS.WAV if wav else ENCODINGS[c.encoding], sample_rate_hertz=c.sample_rate_hertz,
        language_code=c.language_code, max_alternatives=c.max_alternatives,
        speech_contexts=[asr_pb2.SpeechContext(phrases=ctx.phrases, boost=ctx.boost) for ctx in c.speech_contexts],
        audio_channel_count=0 if wav else c.audio_channel_count, enable_word_time_offsets=c.enable_word_time_offsets,
        model=c.model, enable_automatic_punctuation=c.enable_automatic_punctuation,
        format_numbers=not c.verbatim_transcripts)  # Riva's inverse text normalization: numbers as digits


def _alternatives(hyps: list[Hypothesis], word_offsets: bool, language: str) -> list[riva.SpeechRecognitionAlternative]:
    """Riva's word times are whole milliseconds."""
    return [riva.SpeechRecognitionAlternative(
        transcript=h.text, confidence=h.confidence, language_code=[language],
        words=[riva.WordInfo(word=w.word, start_time=round(w.start * 1000), end_time=round(w.end * 1000),
                             confidence=w.confidence, language_code=language)
               for w in h.words] if word_offsets else []) for h in hyps]


class RivaServicer(riva_asr_pb2_grpc.RivaSpeechRecognitionServicer):
    def __init__(self, speech: Speech, by_token: bool) -> None:
        self.speech = speech
        self.by_token = by_token

    def _language(self, config: asr_pb2.RecognitionConfig) -> str:
        return config.language_code or self.speech.models.get(config.model).spec.language_code

    async def Recognize(self, request, context):
        method = METHODS["Recognize"]
        try:
            async with self.speech.call(method, deadline_passed(context)):
                check_size(request, self.speech.cfg)
                config = our_config(request.config, request.audio)
                transcript = await self.speech.recognize(method, caller(context, self.by_token), config, request.audio)
        except ServiceError as e:
            await abort(context, e)
        language = self._language(config)
        return riva.RecognizeResponse(id=request.id, results=[riva.SpeechRecognitionResult(
            alternatives=_alternatives(final.hypotheses, config.enable_word_time_offsets, language),
            audio_processed=final.end) for final in transcript.finals])

    async def StreamingRecognize(self, request_iterator, context):
        method = METHODS["StreamingRecognize"]
        try:
            async with self.speech.stream_call(method, caller(context, self.by_token), deadline_passed(context)):
                requests = self.speech.idle_limited(request_iterator)
                r = await streaming_config(requests)
                sc = asr_pb2.StreamingRecognitionConfig(config=our_config(r.config), interim_results=r.interim_results)
                language, offsets = self._language(sc.config), sc.config.enable_word_time_offsets
                async for event in self.speech.stream(sc, audio_messages(requests)):
                    match event:  # Riva sends results only: speech events have no message of its own
                        case InterimResult(hypothesis=hyp, stability=stability, end=end):
                            yield riva.StreamingRecognizeResponse(results=[riva.StreamingRecognitionResult(
                                alternatives=_alternatives([hyp], False, language), stability=stability,
                                audio_processed=end)])
                        case FinalResult():
                            yield riva.StreamingRecognizeResponse(results=[riva.StreamingRecognitionResult(
                                alternatives=_alternatives(event.hypotheses, offsets, language), is_final=True,
                                audio_processed=event.end)])
        except ServiceError as e:
            await abort(context, e)

    async def GetRivaSpeechRecognitionConfig(self, request, context):
        """The models served, with what Riva's clients read of them (`model_name`, `parameters`)."""
        try:
            async with self.speech.call(METHODS["GetRivaSpeechRecognitionConfig"]):
                served = [self.speech.models.get(request.model_name)] if request.model_name else \
                    self.speech.models.served()
        except ServiceError as e:
            await abort(context, e)
        Config = riva.RivaSpeechRecognitionConfigResponse.Config
        return riva.RivaSpeechRecognitionConfigResponse(model_config=[Config(model_name=m.name, parameters={
            "language_code": info.language_code, "sample_rate": str(info.sample_rate_hertz), "type": "online",
            "streaming": "true", "version": info.version, "decoder": info.decoder,
        }) for m in served for info in [model_info(m)]])
