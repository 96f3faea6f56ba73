"""Where finals' second passes run: on a thread of their own, so that however many utterances end
together the workers stay free for the first pass of live streams. The finals that wait while one
batch runs are decoded together in the next (a decoder step over many utterances' beams costs
little more than over one's). A final that would wait behind more than
--max-pending-second-passes others (or comes while the server sheds load) stays the first pass's."""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from engine.recognizer import Final, Recognizer, Rewrite


class SecondPasses:
    def __init__(self, max_pending: int, on_batch: Callable[[str, int], None] = lambda model, size: None) -> None:
        """`on_batch(model, utterances)` as each batch starts."""
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="asr-second-pass")
        self.max_pending = max_pending
        self._on_batch = on_batch
        self.pending = 0  # running or waiting
        self._waiting: list[tuple[str, Recognizer, Rewrite, asyncio.Future]] = []
        self._draining: asyncio.Task | None = None

    def full(self) -> bool:
        return self.pending >= self.max_pending

    async def run(self, model: str, recognizer: Recognizer, asked: Rewrite) -> Final:
        """`model`'s final (`recognizer` serves it) as its second pass hears it."""
        self.pending += 1
        try:
            done = asyncio.get_running_loop().create_future()
            self._waiting.append((model, recognizer, asked, done))
            if self._draining is None or self._draining.done():
                self._draining = asyncio.ensure_future(self._drain())
            return await done
        finally:
            self.pending -= 1

    async def _drain(self) -> None:
        """Batches of what waits, one after another: each of one model's finals."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            model, recognizer = self._waiting[0][:2]
            batch = [w for w in self._waiting if w[1] is recognizer and not w[3].done()]  # done: its stream left
            self._waiting = [w for w in self._waiting if w[1] is not recognizer]
            if not batch:
                continue
            self._on_batch(model, len(batch))
            try:
                finals = await loop.run_in_executor(self._pool, recognizer.rewrite_many, [w[2] for w in batch])
            except Exception as e:  # each waiting stream gets the error of the batch it was in
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(e)
                continue
            for (*_, done), final in zip(batch, finals):
                if not done.done():
                    done.set_result(final)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
