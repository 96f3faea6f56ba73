"""The model directory and the ONNX Runtime session that runs it.

`ModelSpec` is everything export wrote to `model.json` and `tokens.txt`;
`ModelSession.step` runs one chunk for a batch of streams, state in and out.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.features import FeatureConfig

MAX_BEAM_WIDTH = 256  # per request, and in model.json

log = logging.getLogger(__name__)
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@dataclass(frozen=True)
class StateSpec:
    input: str
    output: str
    shape: tuple[int, ...]  # with 1 at batch_axis
    batch_axis: int


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

    @classmethod
    def load(cls, directory: Path) -> "ModelSpec":
        directory = Path(directory)
        for required in ("model.onnx", "model.json", "tokens.txt"):
            if not (directory / required).is_file():
                raise FileNotFoundError(f"{directory}: no {required}; is this a model directory written by "
                                        "`python -m export`?")
        meta = json.loads((directory / "model.json").read_text())
        tokens = read_tokens(directory / "tokens.txt")
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
        lm = directory / decoder["lm"] if decoder.get("lm") else None
        unigrams = directory / decoder["unigrams"] if decoder.get("unigrams") else None
        return cls(
            directory=directory, name=meta["name"], version=meta["version"],
            language_code=meta.get("language_code", "en"),
            features=FeatureConfig(**meta["features"]), tokens=tokens,
            subsampling_factor=meta["subsampling_factor"], chunk_frames=meta["chunk_frames"],
            lookahead_frames=meta.get("lookahead_frames", 0),
            states=tuple(StateSpec(s["input"], s["output"], tuple(s["shape"]), s["batch_axis"])
                         for s in meta["states"]),
            parameters=meta.get("parameters", 0), lm=lm, unigrams=unigrams,
            lm_weight=decoder.get("lm_weight", 0.5), word_bonus=decoder.get("word_bonus", 1.0),
            beam_width=beam_width, tail_padding_ms=meta.get("tail_padding_ms", 320), blank_skip=blank_skip,
        )

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
    pairs = [line.rsplit(" ", 1) for line in path.read_text().splitlines() if line.strip()]
    by_id = {int(i): sym for sym, i in pairs}
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
        opts.log_severity_level = 3  # a failed CUDA load on a CPU machine is expected in auto mode
        session = ort.InferenceSession(str(path), opts, providers=[(CUDA, CUDA_OPTIONS), CPU])
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
        self._outputs = ["logprobs", "encoded_lengths", *(s.output for s in spec.states)]
        self.pad_batches = self.provider == CUDA if pad_batches is None else pad_batches

    def warm_up(self, max_batch: int) -> list[int]:
        """Runs one model chunk at every batch size a call can have (with padding, each bucket up to
        `max_batch`'s; else 1 only); returns the sizes run."""
        sizes = sorted({batch_bucket(n) for n in range(1, max_batch + 1)}) if self.pad_batches else [1]
        chunk = np.zeros((self.spec.chunk_frames, self.spec.features.n_mels), np.float32)
        for size in sizes:
            self.step_batch([chunk] * size, [self.initial_state() for _ in range(size)])
        return sizes

    def initial_state(self) -> list[np.ndarray]:
        return [np.zeros(s.shape, np.float32) for s in self.spec.states]

    def step(self, features: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """features (T, n_mels) for one stream, T a multiple of the subsampling
        factor -> (logprobs (T/sub, V), next state)."""
        return self.step_batch([features], [state])[0]

    def step_batch(self, features: list[np.ndarray], states: list[list[np.ndarray]]
                   ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """One model call for several streams' chunks of equal length T."""
        n = len(features)
        if self.pad_batches and batch_bucket(n) > n:
            pad = batch_bucket(n) - n
            features = list(features) + [np.zeros_like(features[0])] * pad
            states = list(states) + [self.initial_state() for _ in range(pad)]
        batch = np.stack(features).transpose(0, 2, 1).astype(np.float32, copy=False)
        feeds = {"audio_signal": batch, "length": np.full(len(features), batch.shape[2], np.int64)}
        for i, spec in enumerate(self.spec.states):
            feeds[spec.input] = np.concatenate([st[i] for st in states], axis=spec.batch_axis)
        logprobs, _, *next_states = self.session.run(self._outputs, feeds)
        return [(logprobs[b], [np.take(x, [b], axis=spec.batch_axis) for x, spec in zip(next_states, self.spec.states)])
                for b in range(n)]
