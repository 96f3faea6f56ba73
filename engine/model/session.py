"""The ONNX Runtime session that runs a model directory's graph: one chunk for a batch of streams,
state in and out, as the directory's streaming scheme (`engine.model.schemes`) says."""

import logging
import math
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from engine.features import frontend
from engine.model.directory import ModelSpec
from engine.model.schemes.explicit_state import batch_bucket

log = logging.getLogger(__name__)
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


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


def one_blas_thread() -> None:
    """numpy's BLAS on the calling thread alone, for the process (the server, evaluation). Its
    own threads busy-wait after each product for the next: the few small products of each final
    (the second pass's front-end) kept a second core spinning, and the pass cost twice its own
    time in CPU (54 against 27 ms per audio second). Parallel work is ONNX Runtime's and the
    server's own threads'."""
    threadpool_limits(1, user_api="blas")


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


class ModelSession:
    """One shared session; `step` is thread-safe (InferenceSession.run is, and the arrays it
    reuses for a batch's states are each thread's own).

    `pad_batches` (default: on CUDA) rounds every batch up to a power of two with silent
    streams, so the provider meets a few batch shapes instead of one per stream count: on
    CUDA each new shape costs a convolution algorithm search (5-10 ms, a stall for every
    stream in the batch), and `warm_up` pays for all of them at start-up. On the CPU the
    padding would be real work, so it is off there."""

    def __init__(self, spec: ModelSpec, provider: str = "auto", threads: int = 1,
                 pad_batches: bool | None = None) -> None:
        self.spec = spec
        self.session, self.provider = create_session(spec.directory / "model.onnx", provider, threads)
        self.pad_batches = self.provider == CUDA if pad_batches is None else pad_batches
        self.silence = frontend(spec.features).silence_frame
        self._scratch = threading.local()

    def warm_up(self, max_batch: int) -> list[int]:
        """Runs one model chunk at every batch size a call can have (with padding, each bucket up to
        `max_batch`'s; else 1 only); returns the sizes run."""
        sizes = sorted({batch_bucket(n) for n in range(1, max_batch + 1)}) if self.pad_batches else [1]
        chunk = np.zeros((self.spec.chunk_frames, self.spec.features.width), np.float32)
        for size in sizes:
            self.step_batch([chunk] * size, [self.initial_state() for _ in range(size)])
        return sizes

    def initial_state(self) -> list[np.ndarray]:
        return self.spec.scheme.initial_state(self)

    def step(self, features: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """features (T, n_mels) for one stream, T a multiple of the subsampling
        factor -> (logprobs (T/sub, V), next state)."""
        return self.step_batch([features], [state])[0]

    def step_batch(self, features: list[np.ndarray], states: list[list[np.ndarray]]
                   ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """One model call (or, buffered, one per window length) for several streams' chunks of equal length T."""
        return self.spec.scheme.step_batch(self, features, states)

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray], into: dict[str, np.ndarray] | None = None
            ) -> list[np.ndarray]:
        """`into`: outputs written straight into the caller's arrays (of the outputs' shapes), not
        into ONNX Runtime's own and then copied into new numpy arrays."""
        if not into:
            return self.session.run(outputs, feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            if name in into:
                array = into[name]
                binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return [into[name] if name in into else values[i].numpy() for i, name in enumerate(outputs)]

    def scratch(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A C-contiguous array of `shape` that the calling thread gets again (overwritten) at its
        next call with `key`: a batch's state in and out (1.5 MB per stream for a cached encoder)
        without new memory to map and fault in at every chunk."""
        size = math.prod(shape)
        flat = getattr(self._scratch, key, None)
        if flat is None or flat.size < size or flat.dtype != dtype:  # grows to the largest batch, --max-batch
            flat = np.empty(size, dtype)
            setattr(self._scratch, key, flat)
        return flat[:size].reshape(shape)
