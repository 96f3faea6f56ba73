"""Prometheus metrics (names fixed by DESIGN.md), on a registry of their own
so that several servers can live in one process (tests)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Speech latencies run from a few milliseconds (one chunk) to seconds (a long file).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes: memory across model reloads
        self.requests = Counter("asr_requests_total", "RPCs by final status code", ["method", "code"], registry=r)
        self.request_duration = Histogram("asr_request_duration_seconds", "Whole unary call",
                                          ["method", "traffic", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.final_latency = Histogram("asr_final_latency_seconds",
                                       "Stream: end of speech or client half-close -> final result sent",
                                       ["traffic", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.partial_latency = Histogram("asr_partial_latency_seconds",
                                         "Stream: audio completing a model chunk -> interim result covering it",
                                         ["traffic", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_result_latency = Histogram("asr_first_result_latency_seconds",
                                              "Stream: first audio byte -> first result sent",
                                              ["traffic", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.audio_seconds = Counter("asr_audio_seconds_total", "Audio received, seconds", registry=r)
        self.real_time_factor = Histogram("asr_real_time_factor", "Processing time / audio time per request",
                                          ["traffic", "model"], buckets=RTF_BUCKETS, registry=r)
        self.active_streams = Gauge("asr_active_streams", "Open streams (gRPC and WebSocket)", registry=r)
        self.stream_lag = Gauge("asr_stream_lag_seconds", "How far behind real time the server keeps its live streams "
                                "(the worst one's lag where the server is the cause)",
                                registry=r)
        self.model_busy = Gauge("asr_model_busy_ratio", "Share of the last 2 s the model and its batch decoding ran",
                                registry=r)
        self.load_shed = Counter("asr_shed_total", "Calls refused because the model was busy near its capacity "
                                 "with live streams, or they were behind real time", ["method"], registry=r)
        self.client_refused = Counter("asr_client_refused_total", "Calls refused or streams ended by a per-client "
                                      "rule: streams, whole_file (the client's limits), behind_real_time",
                                      ["reason"], registry=r)
        self.inference = Histogram("asr_inference_seconds", "One ONNX Runtime model call", ["provider", "model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("asr_batch_size", "Stream chunks per batched model call",
                                    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.decode = Histogram("asr_decode_seconds", "One decoder call (a model batch's streams, or a final)",
                                ["model"], buckets=LATENCY_BUCKETS, registry=r)
        canary = ["set", "model", "pass"]  # pass: "first", or "second" (the finals of a two-pass model)
        self.canary_requests = Counter("asr_canary_requests_total", "Labelled canaries scored", canary, registry=r)
        self.canary_word_errors = Counter("asr_canary_word_errors_total", "Word edits against canary references",
                                          canary, registry=r)
        self.canary_reference_words = Counter("asr_canary_reference_words_total", "Words in canary references",
                                              canary, registry=r)
        self.canary_char_errors = Counter("asr_canary_char_errors_total", "Character edits against canary references",
                                          canary, registry=r)
        self.canary_reference_chars = Counter("asr_canary_reference_chars_total", "Characters in canary references",
                                              canary, registry=r)
        self.canary_wer = Gauge("asr_canary_wer", "WER over the most recent canaries of the set", canary, registry=r)
        self.canary_cer = Gauge("asr_canary_cer", "CER over the most recent canaries of the set", canary, registry=r)
        self.provider_fallbacks = Counter("asr_provider_fallbacks_total",
                                          "Starts where --provider auto could not load CUDA and fell back to CPU",
                                          registry=r)
        self.model_reloads = Counter("asr_model_reloads_total", "Model directories loaded beside a served model: "
                                     "reloaded (now serving), staged (a candidate), failed (load or self-check)",
                                     ["model", "result"], registry=r)
        self.model_promotions = Counter("asr_model_promotions_total", "Staged candidates decided: promoted, "
                                        "rejected, expired, replaced", ["model", "result"], registry=r)
        self.promotion_wer = Gauge("asr_promotion_wer", "A staged candidate's evaluation: WER of the candidate "
                                   "and of the serving model on the same canaries", ["model", "set", "side"],
                                   registry=r)
        self.promotion_canaries = Gauge("asr_promotion_canaries", "Canaries a staged candidate has decoded",
                                        ["model", "set"], registry=r)
        self.second_pass_fallbacks = Counter("asr_second_pass_fallbacks_total", "Finals left as the first pass "
                                             "heard them because the server was shedding load", ["model"], registry=r)
        self.second_pass_early = Counter("asr_second_pass_early_total", "Second passes started when an utterance "
                                         "went quiet, before its endpoint: used by its final, or not (the "
                                         "speaker went on, or the first pass changed its mind)",
                                         ["model", "outcome"], registry=r)
        self.second_pass_batch = Histogram("asr_second_pass_batch_utterances", "Finals decoded together in one "
                                           "batch of the second pass", ["model"], buckets=(1, 2, 4, 8, 16, 32),
                                           registry=r)
        self.model_info = Gauge("asr_model_info", "The model being served (value 1)",
                                ["model", "version", "provider"], registry=r)
