"""Batches model chunks that are ready in different streams into one model call.

Streams await `step`; a single loop takes every chunk queued by the time the
model is free (waiting at most `max_wait_s` for more, up to `max_batch`),
runs equal-length chunks as one ONNX Runtime call on the worker pool (live
streams' before whole files'), then
(with `decode`) decodes the batch's log-probs in one call, and hands each
stream its log-probs and next state. One batch is in flight at a time: on CPU
the intra-op threads use the cores, on CUDA the provider has a single compute
stream anyway.
"""

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from engine.model.session import ModelSession

log = logging.getLogger(__name__)
BUSY_WINDOW_S = 2.0


class ModelBatcher:
    def __init__(self, session: ModelSession, executor: Executor, max_batch: int, max_wait_s: float,
                 on_batch: Callable[[float, int], None] = lambda seconds, size: None,
                 decode: Callable[[list, list[np.ndarray]], None] | None = None) -> None:
        """`decode(payloads, logprobs)`: called after each model call, on the same thread, with the
        `decode` payloads its streams passed to `step` and their log-probs."""
        self.session = session
        self._decode = decode
        self._executor = executor
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._stopped: str | None = None  # why steps are refused: the loop stopped or died
        self._batch: list = []  # taken from the queue, not yet answered
        self._busy: deque[tuple[float, float]] = deque()  # (end, seconds) of recent model calls and decoding

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Stops the loop and the executor it runs the model on (a replaced model's thread goes too)."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            # The cancelled task keeps its CancelledError, whose traceback holds the loop's frame and so
            # this batcher: a cycle that kept a replaced model's session alive until the next full
            # garbage collection (RSS +30 MB after the first reload).
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _ended(self, task: asyncio.Task) -> None:
        """The loop is gone (stopped, or a bug of ours): no step may wait for it forever."""
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("the model batcher died", exc_info=error)
        self._stopped = "the model batcher stopped" if error is None else "the model batcher died"
        waiting = self._batch + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for item in waiting:
            if not item[2].done():
                item[2].set_exception(RuntimeError(self._stopped))

    def busy_ratio(self, window_s: float = BUSY_WINDOW_S) -> float:
        """The share of the last `window_s` the model (and its batch decoding) was running for live
        streams: how close the server is to its capacity for them, whatever the mix of streams.
        Whole-file work (`live=False` steps) only fills what they leave."""
        now = time.monotonic()
        while self._busy and self._busy[0][0] < now - window_s:
            self._busy.popleft()
        return min(1.0, sum(seconds for _, seconds in self._busy) / window_s)

    async def step(self, features: np.ndarray, state: list[np.ndarray], decode: object = None, live: bool = True
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
        if self._stopped:
            raise RuntimeError(self._stopped)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((features, state, future, decode, live))
        return await future

    def _run(self, items: list) -> tuple[list, float]:
        """The model call (and its seconds), then the decoding of its outputs."""
        started = time.perf_counter()
        outputs = self.session.step_batch([it[0] for it in items], [it[1] for it in items])
        seconds = time.perf_counter() - started
        if self._decode:
            self._decode([it[3] for it in items], [out[0] for out in outputs])
        return outputs, seconds

    async def _collect(self) -> list:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._batch = batch = await self._collect()
            # Live streams' chunks first, in calls of their own: whole files' steps taken in the same
            # batch wait for them rather than delay them.
            calls = defaultdict(list)
            for item in batch:
                calls[(not item[4], len(item[0]))].append(item)
            for _, items in sorted(calls.items(), key=lambda call: call[0]):
                items = [it for it in items if not it[2].done()]  # callers that gave up (cancelled)
                if not items:
                    continue
                started = time.monotonic()
                try:
                    outputs, seconds = await loop.run_in_executor(self._executor, self._run, items)
                except Exception as e:  # every waiting stream learns of it; the loop goes on
                    log.exception("model batch of %d failed", len(items))
                    for it in items:
                        if not it[2].done():
                            it[2].set_exception(e)
                    continue
                live_share = sum(it[4] for it in items) / len(items)
                ended = time.monotonic()
                self._busy.append((ended, (ended - started) * live_share))
                self._on_batch(seconds, len(items))
                for it, out in zip(items, outputs):
                    if not it[2].done():
                        it[2].set_result(out)
