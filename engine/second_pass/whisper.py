"""`whisper`: Whisper's encoder over the utterance in its 30 s window, then its text decoder, beam
search over ONNX Runtime with a key/value cache (`python -m export.second_pass` writes the graphs
from the Whisper wheel). Whisper writes cased, punctuated text.

Whisper was trained on 30 s windows: decoding an utterance's frames alone runs away into
repetition (FIELD-NOTES). So the decoder is shown the whole window, the utterance followed by
silence, but only the utterance's frames (and `SILENCE_AFTER` more) are encoded per utterance:
they attend to each other and to the keys and values that a window of silence has at the
positions after them, and the window's rest is that silence's encoding, both computed once at
export; past the utterance the silence is attended to in groups of `SILENCE_GROUP` frames, each
one mean key and value weighted as the frames it stands for. The silence is always the same input
because every clip's level is set the same (`log_mel`). The text is capped at
`max_tokens_per_second` of the audio. The texts it returns are its beam's and the proposed ones
(the first pass's), each scored by the decoder alike: where Whisper mishears what the first pass
heard well (a lone digit), the first pass's text can still win (model card).
"""

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.features import FeatureConfig, FrontEnd, frontend
from engine.second_pass.bpe import Bpe
from engine.second_pass.kind import Utterance

SAMPLE_RATE = 16000
HOP = 160
MAX_SECONDS = 30.0  # Whisper's window
WINDOW = 1500  # its encoder frames
SILENCE_AFTER = 10  # encoder frames (200 ms) of the silence after an utterance encoded with it
SILENCE_GROUP = 50  # the silence further on is attended to in groups of this many frames (1 s)
# A clip's loudest log10 power is moved here: near the middle of real speech's (0.9 on speechocean762;
# 0.5 and 0.9 measured alike, the model card).
LEVEL = 0.5
MAX_TOKENS = 224  # Whisper's own cap on a window's text
MAX_PROMPT = 223  # and on the earlier text it is shown (a prompt)
POSITIONS = 448  # the decoder's positions: prompt and text together
MAX_BEAM = 16  # the decoder graph gives each row's best MAX_BEAM + 1 next tokens (and a few more)


def log_mel(audio: np.ndarray, frames: int) -> np.ndarray:
    """Whisper's log-mel of a clip padded with silence to `frames` (80, frames), its level set: the
    clip's loudest point at `LEVEL` (log10 power) and Whisper's floor 8 below it, so that the silence
    after any utterance is the same input (Whisper's own floor follows the clip's loudest point)."""
    padded = np.zeros(frames * HOP + 400, np.float32)
    padded[200:200 + min(len(audio), frames * HOP)] = audio[:frames * HOP]  # Whisper centres its frames
    power = _whisper_frontend().power(padded)[:frames]
    log_spec = np.log10(np.maximum(power, 1e-10))
    log_spec += LEVEL - log_spec.max()
    return ((np.maximum(log_spec, LEVEL - 8.0) + 4.0) / 4.0).T.astype(np.float32)


@functools.cache
def _whisper_frontend() -> FrontEnd:
    return frontend(FeatureConfig.whisper())  # its mel filters are computed once, not per utterance


def silence_value() -> float:
    """What `log_mel` gives every frame of silence."""
    return (LEVEL - 8.0 + 4.0) / 4.0


@dataclass(frozen=True)
class Settings:
    beam: int = 5
    max_tokens_per_second: float = 8.0
    keep_first_above: float = 0.9  # a final the first pass is this sure of is kept as it is
    # The KenLM's weight (its log-probability per word) beside Whisper's (per token) among the beam's
    # texts: 0.5 was best on real utterances held out from every reported set (model card).
    lm_weight: float = 0.5
    # The first pass's support for each text (its best CTC path's log-probability per frame): a text
    # that leaves out words the audio holds scores low. 6 was best beside lm_weight 0.5 and the gate
    # on real utterances held out from every reported set (model card).
    ctc_weight: float = 6.0

    def __post_init__(self) -> None:
        if not 0 <= self.keep_first_above <= 1.01:
            raise ValueError("second_pass.keep_first_above must be from 0 to 1 (above 1: never keep the first)")
        if not 1 <= self.beam <= MAX_BEAM:
            raise ValueError(f"second_pass.beam must be from 1 to {MAX_BEAM}")
        if self.max_tokens_per_second <= 0:
            raise ValueError("second_pass.max_tokens_per_second must be positive")
        if not 0 <= self.lm_weight <= 10:
            raise ValueError("second_pass.lm_weight must be from 0 to 10")
        if not 0 <= self.ctc_weight <= 100:
            raise ValueError("second_pass.ctc_weight must be from 0 to 100")


class WhisperPass:
    max_seconds = MAX_SECONDS

    def __init__(self, directory: Path, settings: dict, threads: int = 1) -> None:
        known = {f.name for f in dataclasses.fields(Settings)}
        if unknown := sorted(set(settings) - known - {"kind"}):
            raise ValueError(f"second_pass: unknown settings {', '.join(unknown)} (written by an older "
                             "export: run python -m export.second_pass again)")
        self.settings = Settings(**{k: v for k, v in settings.items() if k != "kind"})
        self.keep_first_above, self.lm_weight = self.settings.keep_first_above, self.settings.lm_weight
        self.ctc_weight = self.settings.ctc_weight
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
        if "top_tokens" not in {o.name for o in self.decoder.get_outputs()}:
            raise ValueError(f"{directory / 'decoder.onnx'} chooses no next tokens (written by an older export: "
                             "run python -m export.second_pass again)")
        config = json.loads((directory / "whisper_config.json").read_text())  # the wheel's config.json
        self._suppressed_first = config["suppress_ids_begin"]  # a space, or the end, as the first token
        self._cross = [o.name for o in self.encoder.get_outputs()]
        self._layers = self.decoder.get_inputs()[1].shape[0]
        self._width = self.decoder.get_inputs()[1].shape[-1]
        self._no_past = np.zeros((self._layers, 2, 1, 0, self._width), np.float32)  # an empty key/value cache

    def encode(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """Each decoder layer's cross-attention keys and values, by the decoder's input names, of the
        window that holds the utterance and then silence."""
        frames = min(WINDOW, math.ceil(len(samples) / HOP / 2) + SILENCE_AFTER)
        return dict(zip(self._cross, self.encoder.run(None, {"mel": log_mel(samples, 2 * frames)[None]})))

    def transcribe(self, utterances: list[Utterance]) -> list[list[tuple[str, float]]]:
        encoded = [self.encode(u.samples) for u in utterances]
        prompts = [self.prompt_of(u.hotwords) for u in utterances]
        by_prompt: dict[int, list[int]] = {}  # one search for the utterances whose prompts are as long
        for i, prompt in enumerate(prompts):
            by_prompt.setdefault(len(prompt), []).append(i)
        found: list[list[tuple[str, float]]] = [[] for _ in utterances]
        for members in by_prompt.values():
            searched = self.search([encoded[i] for i in members],
                                   [len(utterances[i].samples) / SAMPLE_RATE for i in members],
                                   [prompts[i] for i in members])
            for i, texts in zip(members, searched):
                found[i] = [(self.bpe.decode([self.tokens[t] for t in tokens]).strip(), score)
                            for tokens, score in texts]
        for i, u in enumerate(utterances):
            for text in u.proposed:  # written as Whisper writes a sentence, so that its score is comparable
                written = text[:1].upper() + text[1:] + "."
                tokens = self.bpe.encode(" " + written)
                if text and len(prompts[i]) + len(tokens) < POSITIONS:
                    found[i].append((written, self.score(encoded[i], prompts[i], tokens)))
        return [sorted(f, key=lambda f: -f[1]) for f in found]

    def score(self, cross: dict[str, np.ndarray], prompt: list[int], tokens: list[int]) -> float:
        """The decoder's log-probability of `tokens` and then the end after `prompt`, per token (as
        `search` scores what it finds), in one call."""
        past = self._no_past
        logp, = self.decoder.run(["logprobs"], {"tokens": np.array([prompt + tokens], np.int64), "past": past,
                                                **cross})
        steps = np.arange(len(prompt) - 1, len(prompt) + len(tokens))  # the outputs that predict them
        return float(logp[0, steps, [*tokens, self.eot]].sum()) / max(len(tokens), 1)

    def prompt_of(self, hotwords: tuple[str, ...]) -> list[int]:
        """What the decoder is shown before the audio's text: the hotwords as earlier text (Whisper's
        prompt, as faster-whisper's `hotwords`), then the start of a transcript without timestamps."""
        if not hotwords:
            return self.prompt
        return [self._previous, *self.bpe.encode(" " + ", ".join(hotwords))[-MAX_PROMPT:], *self.prompt]

    def decode(self, cross: dict[str, np.ndarray], seconds: float, prompt: list[int] | None = None) -> list[int]:
        """The best text's tokens after `prompt` (default: no hotwords)."""
        return self.search([cross], [seconds], [prompt or self.prompt])[0][0][0]

    def search(self, crosses: list[dict[str, np.ndarray]], seconds: list[float], prompts: list[list[int]]
               ) -> list[list[tuple[list[int], float]]]:
        """Beam search (width `beam`) over the text tokens after each utterance's prompt (all as long),
        the utterances' beams in one decoder call per step: each one's finished texts, best first,
        scored by their log-probability over their length, as Whisper ranks them."""
        beams = [_Beam(self.most_tokens(len(p), s)) for p, s in zip(prompts, seconds)]
        live = list(range(len(beams)))  # the utterances in the decoder's batch, in its order
        cross = _stack(crosses)
        outputs = ["present", "top_logprobs", "top_tokens"]
        past, top_scores, top = self.decoder.run(outputs, {"tokens": np.array(prompts, np.int64),
                                                           "past": np.repeat(self._no_past, len(prompts), axis=2),
                                                           **cross})
        for row, beam in enumerate(beams):
            beam.rows = [row]
        for step in range(max(b.most for b in beams)):
            # each row's beam + 1 best next tokens, best first, as the graph chose them
            if step == 0:
                top_scores[np.isin(top, self._suppressed_first)] = -np.inf
                order = np.argsort(-top_scores, axis=1, kind="stable")
                top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores, order, 1)
            top, top_scores = top[:, :self.settings.beam + 1], top_scores[:, :self.settings.beam + 1].astype(np.float64)
            for u in live:
                beams[u].choose(top, top_scores, step, self.settings.beam, self.eot)
            still = [u for u in live if not beams[u].done]
            if not still:
                break
            if still != live:  # the batch without the utterances that are done
                cross = _stack([crosses[u] for u in still])
                live = still
            rows = max(len(beams[u].hyps) for u in live)  # per utterance, its last repeated where it has fewer
            tokens, origins = [], []
            for i, u in enumerate(live):
                b = beams[u]
                tokens += [[t[-1]] for t, _ in b.hyps] + [[b.hyps[-1][0][-1]]] * (rows - len(b.hyps))
                origins += b.origins + [b.origins[-1]] * (rows - len(b.hyps))
                b.rows = list(range(i * rows, i * rows + len(b.hyps)))
            past, top_scores, top = self.decoder.run(outputs, {"tokens": np.array(tokens, np.int64),
                                                               "past": np.ascontiguousarray(past[:, :, origins]),
                                                               **cross})
        return [b.ranked() for b in beams]

    def most_tokens(self, prompt: int, seconds: float) -> int:
        """The longest text for `seconds` of audio after a prompt of `prompt` tokens: the decoder has
        POSITIONS in all."""
        return min(MAX_TOKENS, POSITIONS - prompt, math.ceil(4 + self.settings.max_tokens_per_second * seconds))


class _Beam:
    """One utterance's beam search: its live texts (tokens, summed log-probability), the decoder
    rows that hold their next token's log-probabilities, and the finished texts."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.hyps: list[tuple[list[int], float]] = [([], 0.0)]
        self.rows: list[int] = []
        self.origins: list[int] = []  # the rows the live texts grew from, for the next call's cache
        self.finished: list[tuple[list[int], float]] = []
        self.done = False

    def choose(self, top: np.ndarray, top_scores: np.ndarray, step: int, beam: int, eot: int) -> None:
        """The `beam` best continuations of the live texts (a run of repetition cut), given every
        row's best next tokens and their log-probabilities; done at `beam` finished texts or the
        length cap."""
        if step >= self.most:
            self.done = True
            return
        candidates = []
        for h, ((_, total), row) in enumerate(zip(self.hyps, self.rows)):
            candidates += [(total + s, row, h, int(t)) for t, s in zip(top[row], top_scores[row]) if np.isfinite(s)]
        candidates.sort(reverse=True)
        keep, origins = [], []
        for total, row, h, t in candidates:
            if t == eot:
                self.finished.append((self.hyps[h][0], total))
            elif len(keep) < beam and not _repeats(self.hyps[h][0] + [t]):
                keep.append((self.hyps[h][0] + [t], total))
                origins.append(row)
            if len(keep) == beam:
                break
        if len(self.finished) >= beam or not keep:
            self.done = True
            return
        self.hyps, self.origins = keep, origins

    def ranked(self) -> list[tuple[list[int], float]]:
        found = self.finished or self.hyps
        return sorted(((t, total / max(len(t), 1)) for t, total in found), key=lambda h: -h[1])


def _stack(crosses: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Utterances' cross-attention keys, values and bias as one batch, in order, each padded to the
    most frames with frames no attention reaches (a bias of -inf)."""
    if len(crosses) == 1:
        return crosses[0]
    frames = max(c["cross_bias"].shape[1] for c in crosses)
    batch = {}
    for name in crosses[0]:
        axis = 1 if name == "cross_bias" else 3 if "keys" in name else 2
        fill = -np.inf if name == "cross_bias" else 0.0

        batch[name] = np.concatenate([_pad(c[name], axis, frames, fill) for c in crosses])
    return batch


def _pad(t: np.ndarray, axis: int, size: int, fill: float) -> np.ndarray:
    width = [(0, 0)] * t.ndim
    width[axis] = (0, size - t.shape[axis])
    return np.pad(t, width, constant_values=fill)


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
