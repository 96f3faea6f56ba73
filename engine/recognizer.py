"""One stream's path through front-end, model, decoder and endpointing.

`Recognizer` holds what all streams share (the ONNX session, the front-end
settings, the decoder); `StreamState` holds everything one stream owns: its
PCM remainder, front-end samples, model state, beams and endpoint counters.
Every chunk moves all of them forward once; nothing already consumed is
recomputed, and at each final the utterance's decoding state is replaced, so
memory stays flat however long the stream runs. A unary request is a stream
that receives all its audio at once, so both RPCs run the same code. With a
second pass (`engine.second_pass`), each final carries its utterance's samples
and `rewrite` gives the final as the second pass hears it.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from engine.decoder.beam_search import BLANK
from engine.decoder.ctc import CtcDecoder, DecodeOptions, DecodeState, Hypothesis
from engine.endpointing import MAX_UTTERANCE, SILENCE_AFTER_SPEECH, SILENCE_NO_SPEECH, EndpointConfig, Endpointer
from engine.features import StreamingFeatures, frontend, logmel_utterance, pad_to_multiple
from engine.model.session import ModelSession
from engine.second_pass import SecondPass, Utterance
from engine.text import spoken

HALF_CLOSE = "half_close"
HOTWORD_BONUS = 0.5  # per word of a request's phrase in a second-pass text (`Recognizer._weigh`)
# An utterance that reaches max_utterance is cut between two words in its last fifth, not where the
# limit falls, which may be inside a word.
CUT_WINDOW = 0.2
NO_ENDPOINTING = EndpointConfig(enabled=False, max_utterance_s=math.inf)  # offline: one utterance
SPEECH_BEGAN = "speech_began"
# With a second pass, an utterance whose trailing silence reaches this share of the endpoint's is
# offered to it early (`Ending`): most have ended, and their finals are then ready at the endpoint.
EARLY = 0.5


@dataclass(frozen=True)
class Final:
    hypotheses: list[Hypothesis]
    reason: str
    end: float  # seconds from the start of the stream
    # Where a second pass will run: the utterance's samples, and its first-pass log-probabilities
    # (T, V) from `offset` frames into the stream, on which the second pass's words are timed.
    audio: np.ndarray | None = None
    logprobs: np.ndarray | None = None
    offset: int = 0
    written: str | None = None  # the second pass's own text (cased, punctuated), once it has run
    first: Hypothesis | None = None  # and the first pass's best, which it replaced
    fell_back: bool = False  # the second pass was due but skipped (the server was shedding load)


@dataclass(frozen=True)
class Ending:
    """An utterance gone quiet (EARLY): the final it would have if it ended now (its hypotheses,
    audio and first-pass outputs so far), so that its second pass can run before the endpoint;
    `Recognizer.settle` gives the final that pass's text if the final says the same."""
    final: Final

    def holds(self, final: Final) -> bool:
        """Whether `final` says what its utterance said when it went quiet (so that the pass run
        then stands for it)."""
        return final.hypotheses[0].text == self.final.hypotheses[0].text


@dataclass(frozen=True)
class Rewrite:
    """A final to give to the second pass, with its request's hotwords and whether it decodes with the LM."""
    final: Final
    hotwords: tuple[str, ...] = ()
    use_lm: bool = True


@dataclass
class Progress:
    """What one call to `accept` produced: output frames, and in stream order the finals, the
    starts of speech (SPEECH_BEGAN) and the utterances gone quiet (`Ending`), so that one message
    holding the end of one utterance and the start of the next tells them in that order."""
    frames: int = 0
    events: list[Final | Ending | str] = field(default_factory=list)

    @property
    def finals(self) -> list[Final]:
        return [e for e in self.events if isinstance(e, Final)]


@dataclass
class StreamState:
    opts: DecodeOptions
    features: StreamingFeatures
    model_state: list[np.ndarray]
    pending: np.ndarray  # feature frames not yet run through the model
    decode: DecodeState
    endpointer: Endpointer
    samples: int = 0  # at the model's rate
    frames: int = 0  # output frames so far
    finals: int = 0
    logprobs: list[np.ndarray] = field(default_factory=list)  # the open utterance's model outputs
    # With a second pass: the open utterance's samples.
    audio: list[np.ndarray] = field(default_factory=list)
    audio_from: int = 0  # the sample of the stream where `audio` starts
    early: bool = False  # utterances gone quiet are offered to the second pass (`Ending`): live streams


class Recognizer:
    def __init__(self, session: ModelSession, decoder: CtcDecoder,
                 on_inference: Callable[[float], None] = lambda s: None,
                 on_decode: Callable[[float], None] = lambda s: None,
                 second_pass: SecondPass | None = None) -> None:
        """`second_pass`: then each final carries its utterance's audio, for `rewrite`."""
        self.session = session
        self.spec = session.spec
        self.decoder = decoder
        self.second_pass = second_pass
        self.logmel = frontend(session.spec.features)
        self._blank = session.spec.tokens.index(BLANK)
        # A causal CTC model emits each character a little after hearing it, and a model with
        # look-ahead waits for the frames after it: a stream that ends abruptly would lose its
        # last letters. So every stream ends with a short quiet tail: fixed noise at -60 dBFS
        # (the model hallucinates on digital silence, which it rarely heard in training).
        n = int(session.spec.tail_padding_ms * session.spec.features.sample_rate / 1000)
        self._tail = (np.random.default_rng(0).standard_normal(n) * 1e-3).astype(np.float32)
        self._on_inference = on_inference
        self._on_decode = on_decode

    def new_stream(self, opts: DecodeOptions, endpointing: EndpointConfig = NO_ENDPOINTING,
                   early: bool = False) -> StreamState:
        """`early`: the stream's utterances gone quiet come as `Ending`s (a live stream's, whose
        finals should be ready at the endpoint; a file's gain nothing by it)."""
        return StreamState(opts, StreamingFeatures(self.logmel), self.session.initial_state(),
                           np.zeros((0, self.spec.features.width), np.float32),
                           self.decoder.start(opts, offset=self._heard_frames(0)),
                           Endpointer(endpointing, self.spec.frame_seconds, self._blank), early=early)

    def decode_many(self, states: list[DecodeState], logprobs: list[np.ndarray]) -> None:
        """Decoding of a model batch's outputs in one call, its streams in parallel (then `consume` each)."""
        started = time.perf_counter()
        self.decoder.advance_many(states, logprobs)
        self._on_decode(time.perf_counter() - started)

    def take_chunks(self, stream: StreamState, samples: np.ndarray) -> list[np.ndarray]:
        """Front-end: the feature chunks now ready for the model, one per model
        chunk while endpointing (so an endpoint falls on its chunk), else one block."""
        stream.samples += len(samples)
        if self.second_pass is not None:
            stream.audio.append(samples)
        stream.pending = np.concatenate([stream.pending, stream.features.accept(samples)])
        chunk = self.spec.chunk_frames
        step = chunk if stream.endpointer.cfg.enabled else len(stream.pending) - len(stream.pending) % chunk
        chunks = []
        while step and len(stream.pending) >= step:
            chunks.append(stream.pending[:step])
            stream.pending = stream.pending[step:]
        return chunks

    def take_last(self, stream: StreamState) -> np.ndarray:
        """At half-close: the rest of the audio plus the quiet tail, as one padded chunk."""
        tail = stream.features.accept(self._tail)
        last = self._pad(np.concatenate([stream.pending, tail, stream.features.flush()]))
        stream.pending = stream.pending[:0]
        return last

    def consume(self, stream: StreamState, logprobs: np.ndarray, model_state: list[np.ndarray],
                progress: Progress) -> None:
        """Endpointing of one model output that `decode_many` has decoded."""
        stream.model_state = model_state
        had_speech, quiet = stream.endpointer.speech, stream.endpointer.trailing_silence
        stream.frames += len(logprobs)
        progress.frames += len(logprobs)
        stream.logprobs.append(logprobs)
        reason = stream.endpointer.update(logprobs)
        if stream.endpointer.speech and not had_speech:
            progress.events.append(SPEECH_BEGAN)
        if reason is None and self._going_quiet(stream, quiet):
            self._offer_early(stream, progress)
        if reason == SILENCE_NO_SPEECH:
            self._take_audio(stream)
            self._reset_utterance(stream)
        elif reason == MAX_UTTERANCE:
            self._cut(stream, progress)
        elif reason:
            self._finalize(stream, reason, progress)
        if reason in (SILENCE_NO_SPEECH, SILENCE_AFTER_SPEECH):
            # The model was trained on utterances that start from a fresh state; after a
            # silence endpoint the next utterance does too (a forced cut keeps its context).
            stream.model_state = self.session.initial_state()

    def close(self, stream: StreamState, progress: Progress) -> None:
        """At half-close, after the last chunk: finalizes whatever the open utterance holds."""
        if stream.decode.frames or not stream.finals:  # every stream with audio ends on a final
            self._finalize(stream, HALF_CLOSE, progress)

    def accept(self, stream: StreamState, samples: np.ndarray) -> Progress:
        """Synchronous front-end + model + decoding (offline use; the service batches through
        `take_chunks`, the batcher, `decode_many` and `consume`)."""
        progress = Progress()
        for chunk in self.take_chunks(stream, samples):
            self._step(stream, chunk, progress)
        return progress

    def finish(self, stream: StreamState) -> Progress:
        progress = Progress()
        last = self.take_last(stream)
        if len(last):
            self._step(stream, last, progress)
        self.close(stream, progress)
        return progress

    def _step(self, stream: StreamState, chunk: np.ndarray, progress: Progress) -> None:
        started = time.perf_counter()
        logprobs, state = self.session.step(chunk, stream.model_state)
        self._on_inference(time.perf_counter() - started)
        self.decode_many([stream.decode], [logprobs])
        self.consume(stream, logprobs, state, progress)

    def partial(self, stream: StreamState) -> tuple[Hypothesis, float]:
        """The open utterance's best hypothesis so far and its stability."""
        return self.decoder.interim(stream.decode)

    def heard(self, stream: StreamState) -> float:
        """Seconds from the stream's start that its model outputs so far describe: the
        frames run, less the model's look-ahead delay, and never past the audio received."""
        heard = max(0, self._heard_frames(stream.frames)) * self.spec.frame_seconds
        return min(heard, stream.samples / self.spec.features.sample_rate)

    def _heard_frames(self, frames: int) -> int:
        """Output frames run, less the model's look-ahead delay (negative at a stream's start,
        where the outputs are pre-roll): the one place the delay is applied."""
        return frames - self.spec.delay_frames

    def utterance_logprobs(self, samples: np.ndarray) -> np.ndarray:
        """Log-probabilities (T', V) of a whole utterance in one model call (offline evaluation)."""
        frames = self._pad(logmel_utterance(self.logmel, np.concatenate([samples, self._tail])))
        return self.session.step(frames, self.session.initial_state())[0]

    def _pad(self, frames: np.ndarray) -> np.ndarray:
        return pad_to_multiple(self.logmel, frames, self.spec.subsampling_factor)

    def _finalize(self, stream: StreamState, reason: str, progress: Progress) -> None:
        started = time.perf_counter()
        hyps = self.decoder.finish(stream.decode)
        self._on_decode(time.perf_counter() - started)
        audio = self._take_audio(stream)
        logprobs = np.concatenate(stream.logprobs) if audio is not None and stream.logprobs else None
        progress.events.append(Final(hyps, reason, self.heard(stream), audio, logprobs, stream.decode.offset))
        stream.finals += 1
        self._reset_utterance(stream)

    def _going_quiet(self, stream: StreamState, quiet_before: int) -> bool:
        """Whether the utterance's trailing silence has just reached EARLY of the endpoint's."""
        endpointer = stream.endpointer
        if self.second_pass is None or not stream.early or not endpointer.cfg.enabled or not endpointer.speech:
            return False
        early = EARLY * endpointer.cfg.silence_after_speech_s / endpointer.frame_s
        return quiet_before < early <= endpointer.trailing_silence

    def _offer_early(self, stream: StreamState, progress: Progress) -> None:
        """An `Ending` of the open utterance, where its second pass is due: the final it would have
        now (the beam search's end, which leaves the search as it was, so that the utterance can go
        on; not its best so far, whose last word is not yet closed), its samples copied."""
        final = Final(self.decoder.finish(stream.decode), SILENCE_AFTER_SPEECH, self.heard(stream),
                      self._held_audio(stream)[0], np.concatenate(stream.logprobs), stream.decode.offset)
        if self._due(final):
            progress.events.append(Ending(final))

    def settle(self, final: Final, rewritten: Final) -> Final | None:
        """`final` with the second pass that its utterance got when it went quiet (`rewritten`, of an
        `Ending` that `holds` it); None where that pass did not run (the pass must run now)."""
        if rewritten.written is None:
            return None
        return replace(self.first_pass_only(final), hypotheses=[rewritten.hypotheses[0], *final.hypotheses[1:]],
                       written=rewritten.written, first=final.hypotheses[0])

    def _cut(self, stream: StreamState, progress: Progress) -> None:
        """max_utterance: the utterance ends in its last fifth, in the widest gap between two words
        of its best hypothesis so far (else after its most blank-like frame); its frames before are
        decoded again as a final, those after begin the next utterance (the model keeps its context)."""
        held = np.concatenate(stream.logprobs)
        start, step, offset = int(len(held) * (1 - CUT_WINDOW)), self.spec.frame_seconds, stream.decode.offset
        words = self.decoder.partial(stream.decode).words
        gaps = [(b.start - a.end, (a.end + b.start) / 2) for a, b in zip(words, words[1:])]
        gaps = [(gap, round(middle / step) - offset) for gap, middle in gaps if round(middle / step) - offset >= start]
        if gaps:
            cut = min(max(gaps)[1], len(held))
        else:
            blank = np.convolve(np.exp(held[start:, self._blank]), np.ones(3) / 3, mode="same")
            cut = start + int(blank.argmax()) + 1
        rest = held[cut:]
        started = time.perf_counter()
        utterance = self.decoder.start(stream.opts, offset=offset)
        self.decoder.advance(utterance, held[:cut])
        hyps = self.decoder.finish(utterance)
        self._on_decode(time.perf_counter() - started)
        end = self.heard(stream) - len(rest) * step
        audio = self._take_audio(stream, end)
        progress.events.append(Final(hyps, MAX_UTTERANCE, end, audio, held[:cut] if audio is not None else None,
                                     offset))
        stream.finals += 1
        stream.decode = self.decoder.start(stream.opts, offset=offset + cut)
        self.decoder.advance(stream.decode, rest)
        stream.endpointer.resume(len(rest), bool((rest.argmax(axis=1) != self._blank).any()))
        stream.logprobs = [rest]

    def _take_audio(self, stream: StreamState, until: float | None = None) -> np.ndarray | None:
        """With a second pass: the open utterance's samples (`_held_audio`), taken out of the
        stream's buffer."""
        if self.second_pass is None:
            return None
        utterance, rest = self._held_audio(stream, until)
        stream.audio, stream.audio_from = [rest], stream.audio_from + len(utterance)
        return utterance

    def _held_audio(self, stream: StreamState, until: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The open utterance's samples up to what the model has heard or `until` seconds into the
        stream, and those after (the next utterance's)."""
        held = np.concatenate(stream.audio) if stream.audio else np.zeros(0, np.float32)
        until = self.heard(stream) if until is None else until
        end = max(round(until * self.spec.features.sample_rate) - stream.audio_from, 0)
        return held[:end], held[end:]

    def rewrite(self, final: Final, hotwords: tuple[str, ...] = (), use_lm: bool = True) -> Final:
        """`rewrite_many` of one final."""
        return self.rewrite_many([Rewrite(final, hotwords, use_lm)])[0]

    def rewrite_many(self, asked: list["Rewrite"]) -> list[Final]:
        """Each final as the second pass hears its utterance (those due decoded together): its text
        in the first pass's spoken form, each word timed and scored where the first pass's outputs
        place it (forced alignment), and the text as the second pass wrote it; among the texts the
        pass found, the KenLM (unless the request's `use_lm` is off) and the first pass's outputs
        have their say at the pass's `lm_weight` and `ctc_weight`. A final the first pass is sure of
        stays as it is: there the first pass was the better (model card); so does one longer than
        the second pass can hear."""
        out = [self.first_pass_only(r.final) for r in asked]
        due = [i for i, r in enumerate(asked) if self._due(r.final)]
        if not due:
            return out
        found_all = self.second_pass.transcribe([
            Utterance(asked[i].final.audio, asked[i].hotwords, (asked[i].final.hypotheses[0].text,)) for i in due])
        for i, found in zip(due, found_all):
            final = asked[i].final
            phrases = [p for p in map(spoken, asked[i].hotwords) if p]
            found = sorted(found, key=lambda f: -self._weigh(f, final.logprobs, phrases, asked[i].use_lm))
            written = found[0][0]
            best = self.decoder.align(spoken(written), final.logprobs, final.offset)
            out[i] = replace(out[i], hypotheses=[best, *final.hypotheses[1:]], written=written,
                             first=final.hypotheses[0])
        return out

    def _weigh(self, found: tuple[str, float], logprobs: np.ndarray, phrases: list[str], use_lm: bool) -> float:
        """A text of the second pass's, by its own score, the KenLM's (unless `use_lm` is off), how
        well the first pass's outputs support it (a text that drops words the audio holds scores
        low there) at the pass's weights, and HOTWORD_BONUS per word of each of the request's
        `phrases` (spoken form) it says (the first pass's outputs support words the acoustic model
        never learned poorly, however well the second pass heard them)."""
        text, score = found
        words = spoken(text)
        score += HOTWORD_BONUS * sum(len(p.split()) for p in phrases if f" {p} " in f" {words} ")
        if use_lm and self.second_pass.lm_weight and self.decoder.has_lm:
            score += self.second_pass.lm_weight * self.decoder.text_score(words)
        if self.second_pass.ctc_weight:
            score += self.second_pass.ctc_weight * self.decoder.path_score(words, logprobs)
        return score

    def _due(self, final: Final) -> bool:
        if self.second_pass is None or final.audio is None or not len(final.audio) or final.logprobs is None:
            return False
        too_long = len(final.audio) > self.second_pass.max_seconds * self.spec.features.sample_rate
        return not too_long and final.hypotheses[0].confidence < self.second_pass.keep_first_above

    @staticmethod
    def first_pass_only(final: Final) -> Final:
        """The final as the first pass gave it, without what a second pass would have read."""
        return replace(final, audio=None, logprobs=None)

    def _reset_utterance(self, stream: StreamState) -> None:
        stream.decode = self.decoder.start(stream.opts, offset=self._heard_frames(stream.frames))
        stream.endpointer.reset()
        stream.logprobs = []
