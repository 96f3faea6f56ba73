import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecognitionConfig(_message.Message):
    __slots__ = ("encoding", "sample_rate_hertz", "language_code", "max_alternatives", "speech_contexts", "audio_channel_count", "enable_word_time_offsets", "decoder", "model", "format_numbers", "enable_automatic_punctuation", "canary")
    class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENCODING_UNSPECIFIED: _ClassVar[RecognitionConfig.AudioEncoding]
        LINEAR16: _ClassVar[RecognitionConfig.AudioEncoding]
        FLOAT32: _ClassVar[RecognitionConfig.AudioEncoding]
        FLAC: _ClassVar[RecognitionConfig.AudioEncoding]
        WAV: _ClassVar[RecognitionConfig.AudioEncoding]
        MULAW: _ClassVar[RecognitionConfig.AudioEncoding]
        ALAW: _ClassVar[RecognitionConfig.AudioEncoding]
    ENCODING_UNSPECIFIED: RecognitionConfig.AudioEncoding
    LINEAR16: RecognitionConfig.AudioEncoding
    FLOAT32: RecognitionConfig.AudioEncoding
    FLAC: RecognitionConfig.AudioEncoding
    WAV: RecognitionConfig.AudioEncoding
    MULAW: RecognitionConfig.AudioEncoding
    ALAW: RecognitionConfig.AudioEncoding
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CODE_FIELD_NUMBER: _ClassVar[int]
    MAX_ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    SPEECH_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENABLE_WORD_TIME_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    DECODER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    ENABLE_AUTOMATIC_PUNCTUATION_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    encoding: RecognitionConfig.AudioEncoding
    sample_rate_hertz: int
    language_code: str
    max_alternatives: int
    speech_contexts: _containers.RepeatedCompositeFieldContainer[SpeechContext]
    audio_channel_count: int
    enable_word_time_offsets: bool
    decoder: DecoderOptions
    model: str
    format_numbers: bool
    enable_automatic_punctuation: bool
    canary: CanaryLabel
    def __init__(self, encoding: _Optional[_Union[RecognitionConfig.AudioEncoding, str]] = ..., sample_rate_hertz: _Optional[int] = ..., language_code: _Optional[str] = ..., max_alternatives: _Optional[int] = ..., speech_contexts: _Optional[_Iterable[_Union[SpeechContext, _Mapping]]] = ..., audio_channel_count: _Optional[int] = ..., enable_word_time_offsets: _Optional[bool] = ..., decoder: _Optional[_Union[DecoderOptions, _Mapping]] = ..., model: _Optional[str] = ..., format_numbers: _Optional[bool] = ..., enable_automatic_punctuation: _Optional[bool] = ..., canary: _Optional[_Union[CanaryLabel, _Mapping]] = ...) -> None: ...

class SpeechContext(_message.Message):
    __slots__ = ("phrases", "boost")
    PHRASES_FIELD_NUMBER: _ClassVar[int]
    BOOST_FIELD_NUMBER: _ClassVar[int]
    phrases: _containers.RepeatedScalarFieldContainer[str]
    boost: float
    def __init__(self, phrases: _Optional[_Iterable[str]] = ..., boost: _Optional[float] = ...) -> None: ...

class DecoderOptions(_message.Message):
    __slots__ = ("beam_width", "lm_weight", "word_bonus", "disable_lm")
    BEAM_WIDTH_FIELD_NUMBER: _ClassVar[int]
    LM_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WORD_BONUS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_LM_FIELD_NUMBER: _ClassVar[int]
    beam_width: int
    lm_weight: float
    word_bonus: float
    disable_lm: bool
    def __init__(self, beam_width: _Optional[int] = ..., lm_weight: _Optional[float] = ..., word_bonus: _Optional[float] = ..., disable_lm: _Optional[bool] = ...) -> None: ...

class CanaryLabel(_message.Message):
    __slots__ = ("reference", "set")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    reference: str
    set: str
    def __init__(self, reference: _Optional[str] = ..., set: _Optional[str] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("config", "audio_content")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    config: RecognitionConfig
    audio_content: bytes
    def __init__(self, config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., audio_content: _Optional[bytes] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("results", "total_billed_time", "canary_score")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BILLED_TIME_FIELD_NUMBER: _ClassVar[int]
    CANARY_SCORE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SpeechRecognitionResult]
    total_billed_time: _duration_pb2.Duration
    canary_score: CanaryScore
    def __init__(self, results: _Optional[_Iterable[_Union[SpeechRecognitionResult, _Mapping]]] = ..., total_billed_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., canary_score: _Optional[_Union[CanaryScore, _Mapping]] = ...) -> None: ...

class StreamingRecognitionConfig(_message.Message):
    __slots__ = ("config", "single_utterance", "interim_results")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SINGLE_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    config: RecognitionConfig
    single_utterance: bool
    interim_results: bool
    def __init__(self, config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., single_utterance: _Optional[bool] = ..., interim_results: _Optional[bool] = ...) -> None: ...

class StreamingRecognizeRequest(_message.Message):
    __slots__ = ("streaming_config", "audio_content")
    STREAMING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    streaming_config: StreamingRecognitionConfig
    audio_content: bytes
    def __init__(self, streaming_config: _Optional[_Union[StreamingRecognitionConfig, _Mapping]] = ..., audio_content: _Optional[bytes] = ...) -> None: ...

class StreamingRecognizeResponse(_message.Message):
    __slots__ = ("results", "speech_event_type", "total_billed_time", "endpoint_reason", "canary_score")
    class SpeechEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SPEECH_EVENT_UNSPECIFIED: _ClassVar[StreamingRecognizeResponse.SpeechEventType]
        END_OF_SINGLE_UTTERANCE: _ClassVar[StreamingRecognizeResponse.SpeechEventType]
        SPEECH_ACTIVITY_BEGIN: _ClassVar[StreamingRecognizeResponse.SpeechEventType]
        SPEECH_ACTIVITY_END: _ClassVar[StreamingRecognizeResponse.SpeechEventType]
    SPEECH_EVENT_UNSPECIFIED: StreamingRecognizeResponse.SpeechEventType
    END_OF_SINGLE_UTTERANCE: StreamingRecognizeResponse.SpeechEventType
    SPEECH_ACTIVITY_BEGIN: StreamingRecognizeResponse.SpeechEventType
    SPEECH_ACTIVITY_END: StreamingRecognizeResponse.SpeechEventType
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BILLED_TIME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_REASON_FIELD_NUMBER: _ClassVar[int]
    CANARY_SCORE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StreamingRecognitionResult]
    speech_event_type: StreamingRecognizeResponse.SpeechEventType
    total_billed_time: _duration_pb2.Duration
    endpoint_reason: str
    canary_score: CanaryScore
    def __init__(self, results: _Optional[_Iterable[_Union[StreamingRecognitionResult, _Mapping]]] = ..., speech_event_type: _Optional[_Union[StreamingRecognizeResponse.SpeechEventType, str]] = ..., total_billed_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., endpoint_reason: _Optional[str] = ..., canary_score: _Optional[_Union[CanaryScore, _Mapping]] = ...) -> None: ...

class SpeechRecognitionResult(_message.Message):
    __slots__ = ("alternatives", "result_end_time", "second_pass_fallback")
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    RESULT_END_TIME_FIELD_NUMBER: _ClassVar[int]
    SECOND_PASS_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    alternatives: _containers.RepeatedCompositeFieldContainer[SpeechRecognitionAlternative]
    result_end_time: _duration_pb2.Duration
    second_pass_fallback: bool
    def __init__(self, alternatives: _Optional[_Iterable[_Union[SpeechRecognitionAlternative, _Mapping]]] = ..., result_end_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., second_pass_fallback: _Optional[bool] = ...) -> None: ...

class StreamingRecognitionResult(_message.Message):
    __slots__ = ("alternatives", "is_final", "stability", "result_end_time", "second_pass_fallback")
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    STABILITY_FIELD_NUMBER: _ClassVar[int]
    RESULT_END_TIME_FIELD_NUMBER: _ClassVar[int]
    SECOND_PASS_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    alternatives: _containers.RepeatedCompositeFieldContainer[SpeechRecognitionAlternative]
    is_final: bool
    stability: float
    result_end_time: _duration_pb2.Duration
    second_pass_fallback: bool
    def __init__(self, alternatives: _Optional[_Iterable[_Union[SpeechRecognitionAlternative, _Mapping]]] = ..., is_final: _Optional[bool] = ..., stability: _Optional[float] = ..., result_end_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., second_pass_fallback: _Optional[bool] = ...) -> None: ...

class SpeechRecognitionAlternative(_message.Message):
    __slots__ = ("transcript", "confidence", "words")
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    transcript: str
    confidence: float
    words: _containers.RepeatedCompositeFieldContainer[WordInfo]
    def __init__(self, transcript: _Optional[str] = ..., confidence: _Optional[float] = ..., words: _Optional[_Iterable[_Union[WordInfo, _Mapping]]] = ...) -> None: ...

class WordInfo(_message.Message):
    __slots__ = ("start_time", "end_time", "word", "confidence")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    start_time: _duration_pb2.Duration
    end_time: _duration_pb2.Duration
    word: str
    confidence: float
    def __init__(self, start_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., end_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., word: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class CanaryScore(_message.Message):
    __slots__ = ("set", "word_errors", "reference_words", "char_errors", "reference_chars", "wer", "cer", "pass_name")
    SET_FIELD_NUMBER: _ClassVar[int]
    WORD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_WORDS_FIELD_NUMBER: _ClassVar[int]
    CHAR_ERRORS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_CHARS_FIELD_NUMBER: _ClassVar[int]
    WER_FIELD_NUMBER: _ClassVar[int]
    CER_FIELD_NUMBER: _ClassVar[int]
    PASS_NAME_FIELD_NUMBER: _ClassVar[int]
    set: str
    word_errors: int
    reference_words: int
    char_errors: int
    reference_chars: int
    wer: float
    cer: float
    pass_name: str
    def __init__(self, set: _Optional[str] = ..., word_errors: _Optional[int] = ..., reference_words: _Optional[int] = ..., char_errors: _Optional[int] = ..., reference_chars: _Optional[int] = ..., wer: _Optional[float] = ..., cer: _Optional[float] = ..., pass_name: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ReloadModelRequest(_message.Message):
    __slots__ = ("name", "directory", "stage")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    directory: str
    stage: bool
    def __init__(self, name: _Optional[str] = ..., directory: _Optional[str] = ..., stage: _Optional[bool] = ...) -> None: ...

class ReloadModelResponse(_message.Message):
    __slots__ = ("result", "message", "model", "sets", "self_check_wer")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    SELF_CHECK_WER_FIELD_NUMBER: _ClassVar[int]
    result: str
    message: str
    model: ModelInfo
    sets: _containers.RepeatedCompositeFieldContainer[CanaryComparison]
    self_check_wer: float
    def __init__(self, result: _Optional[str] = ..., message: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., sets: _Optional[_Iterable[_Union[CanaryComparison, _Mapping]]] = ..., self_check_wer: _Optional[float] = ...) -> None: ...

class CanaryComparison(_message.Message):
    __slots__ = ("set", "canaries", "reference_words", "candidate_wer", "serving_wer")
    SET_FIELD_NUMBER: _ClassVar[int]
    CANARIES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_WORDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_WER_FIELD_NUMBER: _ClassVar[int]
    SERVING_WER_FIELD_NUMBER: _ClassVar[int]
    set: str
    canaries: int
    reference_words: int
    candidate_wer: float
    serving_wer: float
    def __init__(self, set: _Optional[str] = ..., canaries: _Optional[int] = ..., reference_words: _Optional[int] = ..., candidate_wer: _Optional[float] = ..., serving_wer: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "sample_rate_hertz", "tokens", "subsampling_factor", "chunk_duration", "lookahead", "provider", "has_language_model", "parameters", "language_code", "decoder", "frontend", "vocabulary", "streaming")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUBSAMPLING_FACTOR_FIELD_NUMBER: _ClassVar[int]
    CHUNK_DURATION_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    HAS_LANGUAGE_MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CODE_FIELD_NUMBER: _ClassVar[int]
    DECODER_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    sample_rate_hertz: int
    tokens: _containers.RepeatedScalarFieldContainer[str]
    subsampling_factor: int
    chunk_duration: _duration_pb2.Duration
    lookahead: _duration_pb2.Duration
    provider: str
    has_language_model: bool
    parameters: int
    language_code: str
    decoder: str
    frontend: str
    vocabulary: str
    streaming: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., sample_rate_hertz: _Optional[int] = ..., tokens: _Optional[_Iterable[str]] = ..., subsampling_factor: _Optional[int] = ..., chunk_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lookahead: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., provider: _Optional[str] = ..., has_language_model: _Optional[bool] = ..., parameters: _Optional[int] = ..., language_code: _Optional[str] = ..., decoder: _Optional[str] = ..., frontend: _Optional[str] = ..., vocabulary: _Optional[str] = ..., streaming: _Optional[str] = ...) -> None: ...
