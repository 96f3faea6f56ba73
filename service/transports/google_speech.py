"""Google Cloud Speech-to-Text v1 (`google.cloud.speech.v1.Speech`) on the gRPC port, so that
Google's client libraries talk to this server unchanged: its messages mapped onto ours (the
field table is docs/protocols.md), the calls served by `service.session.speech` as ours are.

The message classes are the `google-cloud-speech` package's own (its proto-plus types wrap the
published protos), so nothing is copied by hand. LongRunningRecognize starts an operation of
`service.transports.google_operations`, decoded as a whole file cut at pauses."""

import grpc
from google.cloud.speech_v1.types import cloud_speech
from google.longrunning import operations_pb2

from ctc_asr.v1 import asr_pb2
from engine.decoder.ctc import Hypothesis
from service.errors import ServiceError, Status
from service.session.events import EndOfSingleUtterance, FinalResult, InterimResult, SpeechBegin, SpeechEnd
from service.session.options import MAX_ALTERNATIVES, recognition_options
from service.session.speech import Speech
from service.transports.google_operations import Job, Operations, timestamp
from service.transports.grpc_api import abort, audio_messages, caller, check_size, deadline_passed, streaming_config
from service.transports.messages import duration

SERVICE = "google.cloud.speech.v1.Speech"
METHODS = {"Recognize": "google.Recognize", "StreamingRecognize": "google.StreamingRecognize",
           "LongRunningRecognize": "google.LongRunningRecognize"}  # `method` labels

Config = cloud_speech.RecognitionConfig.pb()
Encoding = Config.AudioEncoding
OURS = asr_pb2.RecognitionConfig.AudioEncoding
ENCODINGS = {Encoding.ENCODING_UNSPECIFIED: OURS.ENCODING_UNSPECIFIED, Encoding.LINEAR16: OURS.LINEAR16,
             Encoding.FLAC: OURS.FLAC, Encoding.MULAW: OURS.MULAW}
# Google's own model names: this server has one kind of model for all of them, the default.
GOOGLE_MODELS = {"default", "latest_long", "latest_short", "command_and_search", "phone_call", "video",
                 "telephony", "telephony_short"}
Event = cloud_speech.StreamingRecognizeResponse.pb().SpeechEventType


def _refuse(field: str, why: str):
    raise ServiceError(Status.INVALID_ARGUMENT, f"config.{field}: {why}")


def our_config(c, speech: Speech) -> asr_pb2.RecognitionConfig:
    """Google's RecognitionConfig as ours: what this server cannot do is refused by field name,
    what does not change the words is ignored (docs/protocols.md)."""
    if c.encoding not in ENCODINGS:
        _refuse("encoding", f"{Encoding.Name(c.encoding)} is not supported here; send LINEAR16, FLAC or MULAW, "
                "or a WAV or FLAC file with ENCODING_UNSPECIFIED")
    if c.enable_separate_recognition_per_channel:
        _refuse("enable_separate_recognition_per_channel", "not supported; channels are mixed to one")
    if c.HasField("adaptation") and c.adaptation.ByteSize():
        _refuse("adaptation", "phrase sets and custom classes are not supported; use speech_contexts")
    if c.HasField("diarization_config") and c.diarization_config.enable_speaker_diarization:
        _refuse("diarization_config", "speaker diarization is not supported")
    model = c.model if c.model not in GOOGLE_MODELS else ""
    served = speech.models.get(model).spec.language_code  # an unknown model: INVALID_ARGUMENT naming those served
    for code in c.alternative_language_codes:
        if code.split("-")[0].lower() != served.split("-")[0].lower():
            _refuse("alternative_language_codes", f"{code[:35]!r} is not served; this model is {served!r}")
    return asr_pb2.RecognitionConfig(
        encoding=ENCODINGS[c.encoding], sample_rate_hertz=c.sample_rate_hertz,
        language_code=c.language_code, max_alternatives=min(c.max_alternatives, MAX_ALTERNATIVES),
        speech_contexts=[asr_pb2.SpeechContext(phrases=ctx.phrases, boost=ctx.boost) for ctx in c.speech_contexts],
        audio_channel_count=c.audio_channel_count,
        enable_word_time_offsets=c.enable_word_time_offsets or c.enable_word_confidence,
        model=model, enable_automatic_punctuation=c.enable_automatic_punctuation)


def _alternatives(hyps: list[Hypothesis], c) -> list:
    """Words carry times with enable_word_time_offsets and confidences with enable_word_confidence,
    as Google's do."""
    out = []
    for h in hyps:
        alt = cloud_speech.SpeechRecognitionAlternative.pb()(transcript=h.text, confidence=h.confidence)
        if c.enable_word_time_offsets or c.enable_word_confidence:
            for w in h.words:
                word = alt.words.add(word=w.word, confidence=w.confidence if c.enable_word_confidence else 0.0)
                if c.enable_word_time_offsets:
                    word.start_time.CopyFrom(duration(w.start))
                    word.end_time.CopyFrom(duration(w.end))
        out.append(alt)
    return out


def _metadata(job: Job):
    Metadata = cloud_speech.LongRunningRecognizeMetadata.pb()
    return Metadata(progress_percent=int(job.progress * 100), start_time=timestamp(job.started),
                    last_update_time=timestamp(job.updated))


class GoogleSpeechServicer:
    def __init__(self, speech: Speech, by_token: bool) -> None:
        self.speech = speech
        self.by_token = by_token
        self.operations = Operations(speech, by_token, _metadata)

    def _request(self, request) -> asr_pb2.RecognitionConfig:
        """A whole-file request's config as ours, its audio checked."""
        if request.audio.WhichOneof("audio_source") == "uri":
            raise ServiceError(Status.INVALID_ARGUMENT, "audio.uri: this server reads no URIs; send the audio in "
                               "audio.content")
        check_size(request, self.speech.cfg)
        config = our_config(request.config, self.speech)
        recognition_options(config, self.speech.models.get(config.model).spec)  # refused now, not in an operation
        return config

    def _results(self, response, finals: list[FinalResult], request, config: asr_pb2.RecognitionConfig) -> None:
        for final in finals:
            response.results.add(alternatives=_alternatives(final.hypotheses, request.config),
                                 result_end_time=duration(final.end), language_code=self._language(config))

    async def Recognize(self, request, context):
        method = METHODS["Recognize"]
        try:
            async with self.speech.call(method, deadline_passed(context)):
                config = self._request(request)
                transcript = await self.speech.recognize(method, caller(context, self.by_token), config,
                                                         request.audio.content)
        except ServiceError as e:
            await abort(context, e)
        response = cloud_speech.RecognizeResponse.pb()(total_billed_time=duration(transcript.seconds))
        self._results(response, transcript.finals, request, config)
        return response

    async def LongRunningRecognize(self, request, context):
        """An operation to poll (`google.longrunning.Operations/GetOperation`), with its progress: the
        audio decoded as a whole file whose utterances end at pauses, a result per utterance."""
        method = METHODS["LongRunningRecognize"]
        client = caller(context, self.by_token)
        try:
            async with self.speech.call(method):
                config = self._request(request)
                if request.HasField("output_config") and request.output_config.gcs_uri:
                    raise ServiceError(Status.INVALID_ARGUMENT, "output_config.gcs_uri: this server writes no "
                                       "files; the operation's response holds the results")

                async def work(job):
                    finals = [e async for e in self.speech.transcribe_file(method, client, config,
                                                                          request.audio.content, job.report)
                              if isinstance(e, FinalResult)]
                    Response = cloud_speech.LongRunningRecognizeResponse.pb()
                    response = Response(total_billed_time=duration(finals[-1].billed_seconds or 0.0))
                    self._results(response, [f for f in finals if f.hypotheses[0].text], request, config)
                    return response
                return self.operations.start(client, work)
        except ServiceError as e:
            await abort(context, e)

    def _language(self, config: asr_pb2.RecognitionConfig) -> str:
        return (config.language_code or self.speech.models.get(config.model).spec.language_code).lower()

    async def StreamingRecognize(self, request_iterator, context):
        method = METHODS["StreamingRecognize"]
        try:
            async with self.speech.stream_call(method, caller(context, self.by_token), deadline_passed(context)):
                requests = self.speech.idle_limited(request_iterator)
                g = await streaming_config(requests)
                sc = asr_pb2.StreamingRecognitionConfig(config=our_config(g.config, self.speech),
                                                        single_utterance=g.single_utterance,
                                                        interim_results=g.interim_results)
                language = self._language(sc.config)
                async for event in self.speech.stream(sc, audio_messages(requests)):
                    if (response := self._response(event, g, language)) is not None:
                        yield response
        except ServiceError as e:
            await abort(context, e)

    @staticmethod
    def _response(event, g, language: str):
        Response, Result = cloud_speech.StreamingRecognizeResponse.pb(), cloud_speech.StreamingRecognitionResult.pb()
        match event:
            case SpeechBegin() | SpeechEnd() if not g.enable_voice_activity_events:
                return None
            case SpeechBegin():
                return Response(speech_event_type=Event.SPEECH_ACTIVITY_BEGIN)
            case SpeechEnd():
                return Response(speech_event_type=Event.SPEECH_ACTIVITY_END)
            case EndOfSingleUtterance():
                return Response(speech_event_type=Event.END_OF_SINGLE_UTTERANCE)
            case InterimResult(hypothesis=hyp, stability=stability, end=end):
                alternative = cloud_speech.SpeechRecognitionAlternative.pb()(transcript=hyp.text)  # no confidence
                return Response(results=[Result(alternatives=[alternative], stability=stability,
                                                result_end_time=duration(end), language_code=language)])
            case FinalResult():
                response = Response(results=[Result(alternatives=_alternatives(event.hypotheses, g.config),
                                                    is_final=True, result_end_time=duration(event.end),
                                                    language_code=language)])
                if event.billed_seconds is not None:
                    response.total_billed_time.CopyFrom(duration(event.billed_seconds))
                return response
        raise TypeError(f"not a stream event: {event!r}")


def handler(servicer: GoogleSpeechServicer) -> grpc.GenericRpcHandler:
    def messages(request, response) -> dict:
        return dict(request_deserializer=request.pb().FromString, response_serializer=response.pb().SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Recognize": grpc.unary_unary_rpc_method_handler(
            servicer.Recognize, **messages(cloud_speech.RecognizeRequest, cloud_speech.RecognizeResponse)),
        "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
            servicer.StreamingRecognize,
            **messages(cloud_speech.StreamingRecognizeRequest, cloud_speech.StreamingRecognizeResponse)),
        "LongRunningRecognize": grpc.unary_unary_rpc_method_handler(
            servicer.LongRunningRecognize,
            request_deserializer=cloud_speech.LongRunningRecognizeRequest.pb().FromString,
            response_serializer=operations_pb2.Operation.SerializeToString),
    })
