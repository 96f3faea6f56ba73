"""Loading a model directory into a served model: the ONNX Runtime session warmed up, the decoder
with its language model, the recognizer and its batcher; and giving a freed model's memory back."""

import contextlib
import ctypes
import ctypes.util
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine import second_pass
from engine.decoder.ctc import CtcDecoder
from engine.model.directory import ModelDirectoryError, ModelSpec
from engine.model.session import CPU, ModelSession
from engine.recognizer import Recognizer
from service.batcher import ModelBatcher
from service.config import ServerConfig
from service.lifecycle.served import ServedModel
from service.metrics import Metrics
from service.session import canary

log = logging.getLogger(__name__)


def first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def load_model(name: str, directory: Path, cfg: ServerConfig, metrics: Metrics) -> ServedModel:
    """One model directory, loaded, warmed up and given its own batcher (started by the caller)."""
    spec = ModelSpec.load(directory, cfg.window_ms)
    name = name or spec.name
    try:
        session = ModelSession(spec, cfg.provider, cfg.intra_op_threads)
        warmed = session.warm_up(cfg.max_batch)
    except Exception as e:  # ONNX Runtime's errors: a corrupt or truncated graph, or one that cannot run
        raise ModelDirectoryError(f"{spec.directory / 'model.onnx'}: ONNX Runtime cannot load or run it "
                                  f"({first_line(e)})") from e
    try:
        decoder = CtcDecoder(spec, cfg.decoder, threads=cfg.workers)
    except Exception as e:  # KenLM's: a corrupt or truncated binary or ARPA file
        # KenLM's message may quote the file's lines: the log has it, the caller (an RPC) does not.
        log.warning("model %s: %s: KenLM cannot load it: %s", name, spec.lm, first_line(e))
        raise ModelDirectoryError(f"{spec.lm}: the language model cannot be loaded (not a KenLM binary or ARPA "
                                  "file, or damaged; the server's log says more)") from e
    try:
        second = second_pass.load(spec.directory, spec.second_pass) if spec.second_pass else None
    except Exception as e:  # its graphs cannot be loaded, or its settings are wrong
        raise ModelDirectoryError(f"{spec.directory / 'second_pass'}: the second pass cannot be loaded "
                                  f"({first_line(e)})") from e
    inference, batch_size = metrics.inference.labels(session.provider, name), metrics.batch_size.labels(name)
    recognizer = Recognizer(session, decoder, on_inference=inference.observe,
                            on_decode=metrics.decode.labels(name).observe, second_pass=second)
    if cfg.provider == "auto" and session.provider == CPU:
        metrics.provider_fallbacks.inc()
    log.info("model %s (%s %s, %s) on %s (%d parameters, LM: %s, beam search: %s, second pass: %s; warmed up at "
             "batch sizes %s)", name, spec.name, spec.version, spec.directory, session.provider, spec.parameters,
             "yes" if recognizer.decoder.has_lm else "no", recognizer.decoder.engine_description,
             spec.second_pass["kind"] if spec.second_pass else "none", ", ".join(map(str, warmed)))
    batcher = ModelBatcher(session, ThreadPoolExecutor(1, thread_name_prefix=f"asr-model-{name}"), cfg.max_batch,
                           cfg.max_batch_wait_ms / 1000,
                           on_batch=lambda s, n: (inference.observe(s), batch_size.observe(n)),
                           decode=recognizer.decode_many)
    return ServedModel(name, Path(directory), recognizer, batcher,
                       canary.CanaryTracker(metrics, name, cfg.max_canary_sets, pinned=cfg.pinned_canary_sets))


def announce(metrics: Metrics, served: ServedModel, replacing: ServedModel | None = None) -> None:
    """asr_model_info names the model now serving under the name."""
    if replacing is not None:
        metrics.model_info.remove(replacing.name, replacing.spec.version, replacing.recognizer.session.provider)
    metrics.model_info.labels(served.name, served.spec.version, served.recognizer.session.provider).set(1)


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters
MMAP_THRESHOLD = 4 * 1024 * 1024
ARENAS = 2


def tune_malloc() -> None:
    """Keeps a reloaded model's memory from staying with the process. Blocks of 4 MiB and more
    stay in mmap for good, so that a freed model's weights go back to the system: glibc raises
    the threshold each time such a block is freed (up to 32 MiB), after which they come from its
    heaps, where the holes they leave stay (RSS grew by 3-6 MB a reload without end); setting it
    also turns that adjustment off. Not lower: a natively streaming model's state, 1.5 MB a
    stream in arrays of about 200 KB, is copied anew at every chunk, and mmap'd each time
    (glibc's own 128 KiB) its pages were faulted in anew: 13-19% more server CPU at 56-64
    streams (docs/performance.md).
    And two heaps in all rather than one per thread (up to 8 per core): each thread that loaded
    a model kept a heap of its own, with the free holes in it (RSS +5-10 MB over the first
    reloads, docs/api.md "Reloading a model"); the calls that allocate are on the GIL or in ONNX
    Runtime's own arena, so they rarely contend.
    Called once at start-up, before any model loads."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to set
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_ARENA_MAX, ARENAS)


def release_memory() -> None:
    """A freed model's memory back to the system: ONNX Runtime and KenLM free it, but glibc keeps
    the pages in its arenas (RSS would otherwise grow by the model's size on the first reloads)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
