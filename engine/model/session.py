"""The model directory and the ONNX Runtime session that runs it.

`ModelSpec` is everything export wrote to `model.json` and `tokens.txt`: the
front-end, the graph's input/output names and layout (`io`), and the streaming
scheme. `ModelSession.step` runs one chunk for a batch of streams, state in and out.

Two streaming schemes (`streaming.scheme`):
- `explicit_state`: the graph takes and returns its own state tensors (ours);
- `buffered`: a full-context graph (wav2vec2, Conformer CTC, ...) runs on windows of
  left context + chunk + right context, and only the chunk's outputs are kept, as NeMo's
  buffered CTC inference and the Hugging Face chunked pipeline do. A stream's state is its
  last left + right input frames; the outputs lag the input by the right context.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.decoder.beam_search import BLANK
from engine.features import FeatureConfig, frontend, normalize_window

MAX_BEAM_WIDTH = 256  # per request, and in model.json
MAX_LM_WEIGHT = 5.0  # per request, and in model.json
MAX_WORD_BONUS = 20.0

log = logging.getLogger(__name__)
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class ModelDirectoryError(ValueError):
    """A model directory that cannot be served, and why."""


def _inside(directory: Path, name, field: str) -> Path | None:
    """A file model.json names: a relative path inside the model directory (a directory served or
    reloaded must not make the server open other files), or None where it names none."""
    if not name:
        return None
    if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{directory / 'model.json'}: {field} must name a file inside the model directory "
                         f"(no absolute path, no '..'), not {name!r}")
    return _own(directory, name)


def _own(directory: Path, name: str) -> Path:
    """`directory / name`, refused where a symlink leads out of the directory (where to is not said)."""
    path = directory / name
    if not path.resolve().is_relative_to(directory.resolve()):
        raise ModelDirectoryError(f"{path}: a link to a file outside the model directory; copy the file in")
    return path


@dataclass(frozen=True)
class StateSpec:
    input: str
    output: str
    shape: tuple[int, ...]  # with 1 at batch_axis
    batch_axis: int


LAYOUTS = ("channels_first", "channels_last", "waveform")  # (B, width, T), (B, T, width), (B, samples)


@dataclass(frozen=True)
class ModelIO:
    """The graph's names: NeMo's by default, sherpa-onnx/icefall use x, x_lens, log_probs."""
    signal: str = "audio_signal"
    length: str | None = "length"  # None: the graph takes no lengths (a Hugging Face export)
    logprobs: str = "logprobs"
    layout: str = "channels_first"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"io.layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """batch (B, T, width) of front-end frames -> the graph's inputs."""
        if self.layout == "channels_first":
            x = batch.transpose(0, 2, 1)
        elif self.layout == "waveform":
            x = batch.reshape(len(batch), -1)
        else:
            x = batch
        x = np.ascontiguousarray(x, np.float32)
        feeds = {self.signal: x}
        if self.length:
            feeds[self.length] = np.full(len(batch), x.shape[-1] if self.layout == "channels_first" else x.shape[1],
                                         np.int64)
        return feeds


@dataclass(frozen=True)
class Buffered:
    """The buffered scheme's contexts, in input frames (multiples of the subsampling factor)."""
    left_frames: int
    right_frames: int


@dataclass(frozen=True)
class ModelSpec:
    directory: Path
    name: str
    version: str
    language_code: str
    features: FeatureConfig
    tokens: tuple[str, ...]
    subsampling_factor: int
    chunk_frames: int
    lookahead_frames: int
    states: tuple[StateSpec, ...]
    parameters: int
    lm: Path | None
    unigrams: Path | None
    lm_weight: float
    word_bonus: float
    beam_width: int
    tail_padding_ms: int
    blank_skip: float | None = None  # frames whose blank probability reaches this advance beams by the blank alone
    io: ModelIO = ModelIO()
    buffered: Buffered | None = None  # None: explicit state

    @classmethod
    def load(cls, directory: Path, window_ms: "tuple[int | None, int | None, int | None]" = (None, None, None)
             ) -> "ModelSpec":
        """`window_ms`: a deployment's (left context, chunk, right context) in ms for a buffered
        model, each None to keep model.json's. Raises ModelDirectoryError, one line saying what is wrong."""
        directory = Path(directory)
        try:
            return cls._parse(directory, window_ms)
        except ModelDirectoryError:
            raise
        except KeyError as e:
            raise ModelDirectoryError(f"{directory / 'model.json'}: no {e} entry") from e
        except (ValueError, TypeError) as e:  # json's errors are ValueErrors
            raise ModelDirectoryError(f"{directory}: {e}" if str(directory) not in str(e) else str(e)) from e

    @classmethod
    def _parse(cls, directory: Path, window_ms) -> "ModelSpec":
        for required in ("model.onnx", "model.json", "tokens.txt"):
            if not _own(directory, required).is_file():
                raise ModelDirectoryError(f"{directory}: no {required}; is this a model directory written by "
                                        "`python -m export`?")
        try:
            meta = json.loads((directory / "model.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{directory / 'model.json'}: not JSON ({e})") from e
        tokens = read_tokens(directory / "tokens.txt")
        if tokens.count(BLANK) != 1:
            raise ValueError(f"{directory / 'tokens.txt'}: a CTC vocabulary has one blank token {BLANK!r}; this one "
                             f"has {tokens.count(BLANK)}")
        decoder = meta.get("decoder", {})
        beam_width = decoder.get("beam_width", 25)  # operators tune it here: refuse what a request could not ask
        if not isinstance(beam_width, int) or not 1 <= beam_width <= MAX_BEAM_WIDTH:
            raise ValueError(f"{directory / 'model.json'}: decoder.beam_width must be a whole number from 1 "
                             f"to {MAX_BEAM_WIDTH}, not {beam_width!r}")
        # A full-context encoder windowed inside the graph (`streaming.window`) keeps its blocks on one
        # grid only when every chunk but a stream's last is a multiple of the block.
        block = meta.get("streaming", {}).get("window", {}).get("block_frames", 1)
        if meta["chunk_frames"] % block:
            raise ValueError(f"{directory / 'model.json'}: chunk_frames {meta['chunk_frames']} is not a multiple "
                             f"of the streaming window's block_frames {block}")
        blank_skip = decoder.get("blank_skip")
        if blank_skip is not None and (isinstance(blank_skip, bool) or not isinstance(blank_skip, (int, float))
                                       or not 0 < blank_skip < 1):
            raise ValueError(f"{directory / 'model.json'}: decoder.blank_skip must be a probability between 0 "
                             f"and 1 (or null: off), not {blank_skip!r}")
        lm, unigrams = (_inside(directory, decoder.get(field), f"decoder.{field}") for field in ("lm", "unigrams"))
        weights = {"lm_weight": (decoder.get("lm_weight", 0.5), 0.0, MAX_LM_WEIGHT),
                   "word_bonus": (decoder.get("word_bonus", 1.0), -MAX_WORD_BONUS, MAX_WORD_BONUS)}
        for field, (value, low, high) in weights.items():  # what a request may ask; NaN fails the comparison
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{directory / 'model.json'}: decoder.{field} must be a number from {low:g} to "
                                 f"{high:g}, not {value!r}")
        features = FeatureConfig(**meta["features"])
        streaming = meta.get("streaming", {})
        scheme = streaming.get("scheme", "explicit_state")
        chunk, lookahead, buffered = meta["chunk_frames"], meta.get("lookahead_frames", 0), None
        if scheme == "buffered":
            sub, ms = meta["subsampling_factor"], features.hop_length * 1000 / features.sample_rate
            left, chunk, right = (round(o / ms) if o is not None else d for o, d in zip(
                window_ms, (streaming["left_frames"], chunk, streaming["right_frames"])))
            if any(v % sub for v in (left, chunk, right)) or chunk <= 0 or right < sub:
                raise ValueError(f"{directory}: buffered streaming needs left context, chunk and right context "
                                 f"in multiples of {sub * ms:g} ms, the right context at least that, "
                                 f"not {left * ms:g}/{chunk * ms:g}/{right * ms:g} ms")
            buffered, lookahead = Buffered(left, right), right
        elif scheme != "explicit_state":
            raise ValueError(f"{directory / 'model.json'}: streaming.scheme must be explicit_state or buffered, "
                             f"not {scheme!r}")
        elif any(v is not None for v in window_ms):
            raise ValueError(f"{directory}: context and chunk overrides apply to buffered models only; this "
                             "model streams with explicit state")
        elif features.normalize != "none":
            raise ValueError(f"{directory / 'model.json'}: features.normalize applies to buffered models only")
        return cls(
            directory=directory, name=meta["name"], version=meta["version"],
            language_code=meta.get("language_code", "en"),
            features=features, tokens=tokens,
            subsampling_factor=meta["subsampling_factor"], chunk_frames=chunk, lookahead_frames=lookahead,
            states=tuple(StateSpec(s["input"], s["output"], tuple(s["shape"]), s["batch_axis"])
                         for s in meta.get("states", ())),
            parameters=meta.get("parameters", 0), lm=lm, unigrams=unigrams,
            lm_weight=weights["lm_weight"][0], word_bonus=weights["word_bonus"][0],
            beam_width=beam_width, blank_skip=blank_skip, io=ModelIO(**meta.get("io", {})), buffered=buffered,
            # the quiet tail must cover the right context, or a stream's last words would never be output
            tail_padding_ms=max(meta.get("tail_padding_ms", 320), round(lookahead * 1000 * features.hop_length
                                                                         / features.sample_rate)),
        )

    @property
    def streaming_description(self) -> str:
        if not self.buffered:
            return "explicit state"
        ms = 1000 * self.features.hop_length / self.features.sample_rate
        return (f"buffered: {self.buffered.left_frames * ms:g} ms left context, {self.chunk_frames * ms:g} ms chunk, "
                f"{self.buffered.right_frames * ms:g} ms right context")

    @property
    def delay_frames(self) -> int:
        """Output frames by which the outputs lag the input: the model's look-ahead."""
        return self.lookahead_frames // self.subsampling_factor

    @property
    def frame_seconds(self) -> float:
        """Duration of one output frame (after subsampling)."""
        return self.features.hop_length * self.subsampling_factor / self.features.sample_rate


def read_tokens(path: Path) -> tuple[str, ...]:
    """tokens.txt lines are `symbol id`, ids 0..V-1."""
    by_id = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        symbol, _, i = line.rpartition(" ")
        if not line.strip():
            continue
        if not symbol or not i.isdigit():  # said without quoting it: the file may not be what it claims
            raise ValueError(f"{path}: line {number} is not `symbol id`")
        by_id[int(i)] = symbol
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"{path}: token ids are not 0..{len(by_id) - 1}")
    return tuple(by_id[i] for i in range(len(by_id)))


# TF32 matmuls moved log-probs by up to 2e-2 against the CPU on an H200; full fp32 agrees.
# ORT's default EXHAUSTIVE conv search benchmarks every new input shape, i.e. every new batch
# size: 40-70 ms each on an H100 (HEURISTIC: 5-10 ms), and streams stalled (scripts/gpu_settings.py).
CUDA_OPTIONS = {"use_tf32": 0, "cudnn_conv_algo_search": "HEURISTIC"}


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning threads steal the cores the Python decoder needs (FIELD-NOTES).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def create_session(path: Path, provider: str, threads: int) -> tuple[ort.InferenceSession, str]:
    """provider: auto|cuda|cpu. Returns the session and the provider actually in use."""
    opts = session_options(threads)
    if provider in ("auto", "cuda") and CUDA in ort.get_available_providers():
        # A failed CUDA load on a CPU machine is expected in auto mode: ORT's default logger would
        # print it as an error (missing libcublasLt, ...) before our warning says the same plainly.
        opts.log_severity_level = 3
        ort.set_default_logger_severity(4 if provider == "auto" else 2)  # 4: fatal only
        try:
            session = ort.InferenceSession(str(path), opts, providers=[(CUDA, CUDA_OPTIONS), CPU])
        finally:
            ort.set_default_logger_severity(2)
        if session.get_providers()[0] == CUDA:
            return session, CUDA
    if provider == "cuda":
        raise RuntimeError("--provider cuda: the CUDA execution provider could not be loaded")
    if provider == "auto":
        log.warning("CUDA execution provider unavailable; running on CPU")
    return ort.InferenceSession(str(path), opts, providers=[CPU]), CPU


def batch_bucket(n: int) -> int:
    """The padded batch size for n streams: the next power of two."""
    return 1 << (n - 1).bit_length()


class ModelSession:
    """One shared session; `step` is thread-safe (InferenceSession.run is).

    `pad_batches` (default: on CUDA) rounds every batch up to a power of two with silent
    streams, so the provider meets a few batch shapes instead of one per stream count: on
    CUDA each new shape costs a convolution algorithm search (5-10 ms, a stall for every
    stream in the batch), and `warm_up` pays for all of them at start-up. On the CPU the
    padding would be real work, so it is off there."""

    def __init__(self, spec: ModelSpec, provider: str = "auto", threads: int = 1,
                 pad_batches: bool | None = None) -> None:
        self.spec = spec
        self.session, self.provider = create_session(spec.directory / "model.onnx", provider, threads)
        self._outputs = [spec.io.logprobs, *(s.output for s in spec.states)]
        self.pad_batches = self.provider == CUDA if pad_batches is None else pad_batches
        self._silence = frontend(spec.features).silence_frame

    def warm_up(self, max_batch: int) -> list[int]:
        """Runs one model chunk at every batch size a call can have (with padding, each bucket up to
        `max_batch`'s; else 1 only); returns the sizes run."""
        sizes = sorted({batch_bucket(n) for n in range(1, max_batch + 1)}) if self.pad_batches else [1]
        chunk = np.zeros((self.spec.chunk_frames, self.spec.features.width), np.float32)
        for size in sizes:
            self.step_batch([chunk] * size, [self.initial_state() for _ in range(size)])
        return sizes

    def initial_state(self) -> list[np.ndarray]:
        """Explicit state: the graph's zeros; buffered: left + right context frames of silence."""
        if self.spec.buffered:
            b = self.spec.buffered
            return [np.tile(self._silence, (b.left_frames + b.right_frames, 1))]
        return [np.zeros(s.shape, np.float32) for s in self.spec.states]

    def step(self, features: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """features (T, n_mels) for one stream, T a multiple of the subsampling
        factor -> (logprobs (T/sub, V), next state)."""
        return self.step_batch([features], [state])[0]

    def step_batch(self, features: list[np.ndarray], states: list[list[np.ndarray]]
                   ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """One model call for several streams' chunks of equal length T."""
        if self.spec.buffered:
            return self._step_buffered(features, states)
        n = len(features)
        if self.pad_batches and batch_bucket(n) > n:
            pad = batch_bucket(n) - n
            features = list(features) + [np.zeros_like(features[0])] * pad
            states = list(states) + [self.initial_state() for _ in range(pad)]
        feeds = self.spec.io.feeds(np.stack(features))
        for i, spec in enumerate(self.spec.states):
            feeds[spec.input] = np.concatenate([st[i] for st in states], axis=spec.batch_axis)
        logprobs, *next_states = self.session.run(self._outputs, feeds)
        return [(logprobs[b], [np.take(x, [b], axis=spec.batch_axis) for x, spec in zip(next_states, self.spec.states)])
                for b in range(n)]

    def _step_buffered(self, features: list[np.ndarray], states: list[list[np.ndarray]]
                       ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """Each stream's chunk cut into pieces of chunk_frames on the stream's own grid (so a
        unary request's block gives what the same audio streamed gives), every piece's window
        run in one batch per window length, the middle outputs kept."""
        b, chunk, sub = self.spec.buffered, self.spec.chunk_frames, self.spec.subsampling_factor
        context = b.left_frames + b.right_frames
        extended = [np.concatenate([st[0], f]) for f, st in zip(features, states)]
        n = len(features[0])
        pieces = [(start, min(chunk, n - start)) for start in range(0, n, chunk)]
        kept: list[dict[int, np.ndarray]] = [{} for _ in features]  # per stream: piece start -> outputs
        for size in sorted({size for _, size in pieces}):
            starts = [start for start, s in pieces if s == size]
            windows = [normalize_window(self.spec.features, ext[start:start + context + size])
                       for ext in extended for start in starts]
            keep = slice(b.left_frames // sub, (b.left_frames + size) // sub)
            logprobs = self._run_windows(windows, keep)
            for i, lp in enumerate(logprobs):
                kept[i // len(starts)][starts[i % len(starts)]] = lp[keep]
        return [(np.concatenate([pieces_out[start] for start, _ in pieces]), [ext[len(ext) - context:]])
                for pieces_out, ext in zip(kept, extended)]

    def _run_windows(self, windows: list[np.ndarray], keep: slice) -> np.ndarray:
        logprobs = self.session.run([self.spec.io.logprobs], self.spec.io.feeds(np.stack(windows)))[0]
        if logprobs.shape[1] < keep.stop:
            raise RuntimeError(f"the model gave {logprobs.shape[1]} output frames for a window of "
                               f"{len(windows[0])} input frames; the chunk's outputs end at frame {keep.stop}")
        return logprobs
