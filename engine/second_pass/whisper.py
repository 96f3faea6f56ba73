"""`whisper`: Whisper's encoder over the whole utterance padded to a fixed window, then its text
decoder, beam search over ONNX Runtime with a key/value cache (`python -m export.second_pass`
writes the graphs from the Whisper wheel). Whisper writes cased, punctuated text.

Whisper was trained on 30 s windows: decoding an utterance's frames alone runs away into
repetition, padding to 15 s does not (FIELD-NOTES), so the window is padded with silence to
`window_seconds` (longer utterances to 30 s), and the text is capped at `max_tokens_per_second` of
the audio. The texts it returns are its beam's and the proposed ones (the first pass's), each
scored by the decoder alike: where Whisper mishears what the first pass heard well (a lone
digit), the first pass's text can still win (model card).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.features import FeatureConfig, frontend
from engine.second_pass.bpe import Bpe

SAMPLE_RATE = 16000
HOP = 160
MAX_SECONDS = 30.0  # Whisper's window
MAX_TOKENS = 224  # Whisper's own cap on a window's text
MAX_PROMPT = 223  # and on the earlier text it is shown (a prompt)
POSITIONS = 448  # the decoder's positions: prompt and text together


def log_mel(audio: np.ndarray, seconds: float) -> np.ndarray:
    """Whisper's log-mel of a clip padded with silence to `seconds` (80, seconds * 100), its
    clip-maximum floor included: at a final the whole utterance is known."""
    samples = int(seconds * SAMPLE_RATE)
    padded = np.zeros(samples + 400, np.float32)
    padded[200:200 + min(len(audio), samples)] = audio[:samples]  # Whisper centres its frames
    power = frontend(FeatureConfig.whisper()).power(padded)[:samples // HOP]
    log_spec = np.log10(np.maximum(power, 1e-10))
    return ((np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0).T.astype(np.float32)


@dataclass(frozen=True)
class Settings:
    window_seconds: float = 15.0
    beam: int = 5
    max_tokens_per_second: float = 8.0
    keep_first_above: float = 0.9  # a final the first pass is this sure of is kept as it is
    # The KenLM's weight (its log-probability per word) beside Whisper's (per token) among the beam's
    # texts: 0.5 was best on real utterances held out from every reported set (model card).
    lm_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.keep_first_above <= 1.01:
            raise ValueError("second_pass.keep_first_above must be from 0 to 1 (above 1: never keep the first)")
        if not 0 < self.window_seconds <= MAX_SECONDS:
            raise ValueError(f"second_pass.window_seconds must be above 0 and at most {MAX_SECONDS:g}")
        if not 1 <= self.beam <= 16:
            raise ValueError("second_pass.beam must be from 1 to 16")
        if self.max_tokens_per_second <= 0:
            raise ValueError("second_pass.max_tokens_per_second must be positive")
        if not 0 <= self.lm_weight <= 10:
            raise ValueError("second_pass.lm_weight must be from 0 to 10")


class WhisperPass:
    max_seconds = MAX_SECONDS

    def __init__(self, directory: Path, settings: dict, threads: int = 1) -> None:
        self.settings = Settings(**{k: v for k, v in settings.items() if k != "kind"})
        self.keep_first_above, self.lm_weight = self.settings.keep_first_above, self.settings.lm_weight
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.encoder = ort.InferenceSession(str(directory / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(directory / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
        self.tokens = (directory / "vocabulary.txt").read_text().splitlines()
        self.bpe = Bpe(directory / "tokenizer.json")
        index = {t: i for i, t in enumerate(self.tokens)}
        self.eot, self.sot = index["<|endoftext|>"], index["<|startoftranscript|>"]
        self._previous = index["<|startofprev|>"]
        self.prompt = [self.sot, index["<|notimestamps|>"]]
        config = json.loads((directory / "whisper_config.json").read_text())  # the wheel's config.json
        suppressed = np.zeros(len(self.tokens), bool)
        suppressed[config["suppress_ids"]] = True
        suppressed[self.sot:] = True  # special tokens and timestamps: text only
        self._suppressed = suppressed
        self._suppressed_first = config["suppress_ids_begin"]  # a space, or the end, as the first token
        self._layers = self.decoder.get_inputs()[1].shape[0]
        self._width = self.decoder.get_inputs()[1].shape[-1]
        self._no_past = np.zeros((self._layers, 2, 1, 0, self._width), np.float32)  # an empty key/value cache

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """The utterance's cross-attention keys and values (layers, 2, 1, S, width)."""
        seconds = len(samples) / SAMPLE_RATE
        window = self.settings.window_seconds if seconds <= self.settings.window_seconds else MAX_SECONDS
        return self.encoder.run(None, {"mel": log_mel(samples, window)[None]})[0]

    def transcribe(self, samples: np.ndarray, hotwords: tuple[str, ...] = (),
                   proposed: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        cross, prompt = self.encode(samples), self.prompt_of(hotwords)
        found = [(self.bpe.decode([self.tokens[t] for t in tokens]).strip(), score)
                 for tokens, score in self.search(cross, len(samples) / SAMPLE_RATE, prompt)]
        for text in proposed:  # written as Whisper writes a sentence, so that its score is comparable
            written = text[:1].upper() + text[1:] + "."
            tokens = self.bpe.encode(" " + written)
            if text and len(prompt) + len(tokens) < POSITIONS:
                found.append((written, self.score(cross, prompt, tokens)))
        return sorted(found, key=lambda f: -f[1])

    def score(self, cross: np.ndarray, prompt: list[int], tokens: list[int]) -> float:
        """The decoder's log-probability of `tokens` and then the end after `prompt`, per token (as
        `search` scores what it finds), in one call."""
        past = self._no_past
        logp, _ = self.decoder.run(None, {"tokens": np.array([prompt + tokens], np.int64), "past": past,
                                          "cross": cross})
        steps = np.arange(len(prompt) - 1, len(prompt) + len(tokens))  # the outputs that predict them
        return float(logp[0, steps, [*tokens, self.eot]].sum()) / max(len(tokens), 1)

    def prompt_of(self, hotwords: tuple[str, ...]) -> list[int]:
        """What the decoder is shown before the audio's text: the hotwords as earlier text (Whisper's
        prompt, as faster-whisper's `hotwords`), then the start of a transcript without timestamps."""
        if not hotwords:
            return self.prompt
        return [self._previous, *self.bpe.encode(" " + ", ".join(hotwords))[-MAX_PROMPT:], *self.prompt]

    def decode(self, cross: np.ndarray, seconds: float, prompt: list[int] | None = None) -> list[int]:
        """The best text's tokens after `prompt` (default: no hotwords)."""
        return self.search(cross, seconds, prompt)[0][0]

    def search(self, cross: np.ndarray, seconds: float, prompt: list[int] | None = None
               ) -> list[tuple[list[int], float]]:
        """Beam search (width `beam`) over the text tokens after `prompt`: the finished texts, best
        first, each scored by its log-probability over its length, as Whisper ranks them."""
        prompt = prompt or self.prompt
        beam, most = self.settings.beam, self.most_tokens(len(prompt), seconds)
        past = self._no_past
        logp, past = self.decoder.run(None, {"tokens": np.array([prompt], np.int64), "past": past, "cross": cross})
        hyps = [([], 0.0)]  # (tokens, summed log-probability) of the live beams, in the cache's order
        step_logp = logp[:, -1]
        finished: list[tuple[list[int], float]] = []
        for step in range(most):
            scores = step_logp.astype(np.float64)
            scores[:, self._suppressed] = -np.inf
            if step == 0:
                scores[:, self._suppressed_first] = -np.inf
            candidates = []
            for b, (_, total) in enumerate(hyps):
                best = np.argpartition(-scores[b], beam)[:beam + 1]
                candidates += [(total + scores[b, t], b, int(t)) for t in best if np.isfinite(scores[b, t])]
            candidates.sort(reverse=True)
            keep, origins = [], []
            for total, b, t in candidates:
                if t == self.eot:
                    finished.append((hyps[b][0], total))
                elif len(keep) < beam and not _repeats(hyps[b][0] + [t]):
                    keep.append((hyps[b][0] + [t], total))
                    origins.append(b)
                if len(keep) == beam:
                    break
            if len(finished) >= beam or not keep:
                break
            hyps = keep
            if cross.shape[2] != len(hyps):
                cross = np.repeat(cross[:, :, :1], len(hyps), axis=2)
            logp, past = self.decoder.run(None, {"tokens": np.array([[t[-1]] for t, _ in hyps], np.int64),
                                                 "past": np.ascontiguousarray(past[:, :, origins]), "cross": cross})
            step_logp = logp[:, -1]
        finished += hyps if not finished else []
        return sorted(((t, total / max(len(t), 1)) for t, total in finished), key=lambda h: -h[1])


    def most_tokens(self, prompt: int, seconds: float) -> int:
        """The longest text for `seconds` of audio after a prompt of `prompt` tokens: the decoder has
        POSITIONS in all."""
        return min(MAX_TOKENS, POSITIONS - prompt, math.ceil(4 + self.settings.max_tokens_per_second * seconds))


def _repeats(tokens: list[int], times: int = 3) -> bool:
    """Whether the tokens end with a run of the same n-gram (n up to 8) `times` over: Whisper's
    runaway repetition, cut before it starts."""
    for n in range(1, 9):
        if len(tokens) < n * times:
            break
        tail = tokens[-n:]
        if all(tokens[-(k + 1) * n:len(tokens) - k * n] == tail for k in range(1, times)):
            return True
    return False
