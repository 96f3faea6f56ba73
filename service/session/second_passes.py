"""Where finals' second passes run: one at a time on a thread of their own, so that however many
utterances end together the workers stay free for the first pass of live streams. A final that
would wait behind more than --max-pending-second-passes others (or comes while the server sheds
load) stays the first pass's."""

import asyncio
from concurrent.futures import ThreadPoolExecutor


class SecondPasses:
    def __init__(self, max_pending: int) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="asr-second-pass")
        self.max_pending = max_pending
        self.pending = 0  # running or waiting

    def full(self) -> bool:
        return self.pending >= self.max_pending

    async def run(self, fn, *args):
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
