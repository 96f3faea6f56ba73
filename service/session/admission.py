"""Admission: which calls the server takes, and which live streams it ends, so that the
streams it holds keep real time and no one client holds everyone's slots.

- New streams and whole-file calls are refused (RESOURCE_EXHAUSTED, `asr_shed_total`) while
  the model ran for live streams more than --max-model-busy-ratio of the last 2 s, and while a
  live stream is more than --shed-stream-lag-seconds behind real time because of the server
  (until none is more than half of it behind). Neither counts what a client's own pace causes:
  work that is not live (whole files, and audio streamed ahead of real time) only fills what
  live streams leave; a stream whose messages carry too little audio to keep real time at the
  rate they may be read, or whose client has sent nothing for a second, is not the server's lag.
- At most --max-concurrent-streams streams and --max-concurrent-recognize whole-file calls at
  once; per client (its bearer token where tokens are configured, else its address) at most
  --max-streams-per-client and --max-recognize-per-client (`asr_client_refused_total{reason}`).
- A live stream more than --max-stream-lag-seconds behind real time is ended with
  RESOURCE_EXHAUSTED: the stream's own messages are too small to be read in real time
  (--max-messages-per-second), or the server lost capacity after admitting it (a noisy
  neighbour, a throttled GPU). Before that, once the server keeps its streams half that far
  behind, `Relief` ends the newest streams, as many as the shortfall measures, so that the
  others catch up and keep real time.
"""

import contextlib
import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from service.config import ServerConfig
from service.errors import ServiceError, Status
from service.metrics import Metrics

AHEAD_ALLOWANCE_S = 1.0  # audio a live client may send ahead of real time before it stops counting as live
CLIENT_STALLED_S = 1.0  # a stream waiting this long for its client's next message is not behind because of us


def client_id(token: str | None, peer_host: str) -> str:
    """Whom per-client limits count: a token (hashed: ids may reach logs, tokens must not), else an address."""
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return "peer:" + peer_host


def grpc_peer_host(peer: str) -> str:
    """`ipv4:10.0.0.1:5000` / `ipv6:[::1]:5000` -> the host; other kinds (unix:...) as they are."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return address.rsplit(":", 1)[0].strip("[]")
    return peer


@dataclass
class StreamClock:
    """How far one live stream is behind real time. Two views, and the smaller counts:
    - its backlog by Lindley's recursion over its messages (time the server held a message,
      throttling included, beyond the audio it carried adds; a client that pauses is not behind);
    - real time since its first audio minus the audio processed (a client sending ahead of real
      time is not behind however long its audio waits)."""
    first_audio_at: float | None = None
    received_s: float = 0.0
    processed_s: float = 0.0
    backlog_s: float = 0.0
    messages: int = 0
    min_message_s: float = 0.0  # audio a message must carry on average to keep real time at the read rate limit
    lag_s: float = 0.0  # how far behind after its last message
    reading_since: float | None = None  # when it began to wait for its client's next message
    relieved: bool = False  # chosen to end so that the server catches up with the others

    def arrived(self, now: float, seconds: float) -> None:
        self.first_audio_at = self.first_audio_at or now
        self.received_s += seconds

    def live(self, now: float) -> bool:
        """Whether its next work is due now: audio more than AHEAD_ALLOWANCE_S ahead of real time is not."""
        return self.received_s - (now - self.first_audio_at) <= AHEAD_ALLOWANCE_S

    def processed(self, held_s: float, seconds: float, now: float) -> None:
        """A message of `seconds` of audio processed `held_s` after it was due to be read (read
        throttling included)."""
        self.processed_s += seconds
        self.messages += 1
        self.backlog_s = max(0.0, self.backlog_s + held_s - seconds)
        self.lag_s = min(self.backlog_s, max(0.0, now - self.first_audio_at - self.processed_s))

    @property
    def own_pace(self) -> bool:
        """Whether its messages are too small to keep real time at the rate they may be read: then
        the client's pattern, not the server, holds it back."""
        return self.processed_s < self.messages * self.min_message_s

    def stalled(self, now: float) -> bool:
        """Waiting for its client's next message for a while: the server holds nothing of it (a
        stream that is behind finds its next message waiting)."""
        return self.reading_since is not None and now - self.reading_since > CLIENT_STALLED_S

    def server_lag_s(self, now: float) -> float:
        """Its lag where the server is the cause: 0 when it is its own pace, or its client stalled."""
        return 0.0 if self.stalled(now) or self.own_pace else self.lag_s


@dataclass
class Admission:
    cfg: ServerConfig
    metrics: Metrics
    busy_ratio: Callable[[], float]
    streams: int = 0  # admitted streams of every transport (grpc.aio's own limit is unreliable)
    unary: int = 0
    _streams_by_client: Counter = field(default_factory=Counter)
    _unary_by_client: Counter = field(default_factory=Counter)
    _clocks: dict[int, StreamClock] = field(default_factory=dict)  # the live streams', oldest first
    _lag_shedding: bool = False
    _relief: "Relief" = field(default_factory=lambda: Relief())

    def server_lag(self) -> float:
        """How far behind real time the server keeps its live streams (asr_stream_lag_seconds): the
        worst stream's lag, where the server is the cause."""
        now = time.perf_counter()
        return max((clock.server_lag_s(now) for clock in self._clocks.values()), default=0.0)

    def _load(self) -> tuple[float, float, bool]:
        """The busiest model's ratio, the server's lag, and whether they call for shedding (the lag
        with hysteresis: until none is half of it behind)."""
        busy, lag = self.busy_ratio(), self.server_lag()
        limit = self.cfg.shed_stream_lag_seconds
        self._lag_shedding = lag > limit or (self._lag_shedding and lag > limit / 2)
        return busy, lag, busy > self.cfg.max_model_busy_ratio or self._lag_shedding

    def overloaded(self) -> bool:
        """Whether new calls are shed now: optional work (a second pass) is skipped then too."""
        return self._load()[2]

    def _shed(self, method: str) -> None:
        busy, lag, overloaded = self._load()
        if overloaded:
            self.metrics.load_shed.labels(method).inc()
            why = (f"its streams are {lag:.1f} s behind real time" if self._lag_shedding
                   else f"the model is busy {busy:.0%} of the time with live streams")
            raise ServiceError(Status.RESOURCE_EXHAUSTED, f"the server is at capacity ({why}); retry with backoff")

    def _refuse(self, reason: str, message: str) -> ServiceError:
        self.metrics.client_refused.labels(reason).inc()
        return ServiceError(Status.RESOURCE_EXHAUSTED, message)

    @contextlib.contextmanager
    def _slot(self, method: str, client: str, kind: str, by_client: Counter, total: int, per_client: int):
        self._shed(method)
        flag, what = ("streams", "streams") if kind == "streams" else ("recognize", "whole-file requests")
        limit = getattr(self.cfg, f"max_concurrent_{flag}")
        if total >= limit:
            raise ServiceError(Status.RESOURCE_EXHAUSTED, f"too many concurrent {what} (at most {limit} on this "
                               f"server, --max-concurrent-{flag}); retry with backoff")
        if by_client[client] >= per_client:
            raise self._refuse(kind, f"this client already has {by_client[client]} {what} open (at most "
                               f"{per_client} per client, --max-{flag}-per-client); retry when one ends")
        by_client[client] += 1
        try:
            yield
        finally:
            by_client[client] -= 1
            if not by_client[client]:
                del by_client[client]  # the table holds only clients with calls open

    @contextlib.contextmanager
    def stream_slot(self, method: str, client: str):
        """A stream's admission, held for the call."""
        with self._slot(method, client, "streams", self._streams_by_client, self.streams,
                        self.cfg.max_streams_per_client):
            self.streams += 1
            self.metrics.active_streams.inc()
            try:
                yield
            finally:
                self.streams -= 1
                self.metrics.active_streams.dec()

    @contextlib.contextmanager
    def unary_slot(self, method: str, client: str):
        """A whole-file call's admission, held for the call."""
        with self._slot(method, client, "whole_file", self._unary_by_client, self.unary,
                        self.cfg.max_recognize_per_client):
            self.unary += 1
            try:
                yield
            finally:
                self.unary -= 1

    def check_lag(self, key: int, clock: StreamClock) -> None:
        """A live stream's lag after a message: the stream is ended past --max-stream-lag-seconds, or
        when relief chose it (`Relief`), with the reason (its own messages or the server's capacity)."""
        self._clocks[key] = clock
        now = time.perf_counter()
        self._relief.tick(self._clocks, now, self.cfg.max_stream_lag_seconds / 2)
        behind = clock.lag_s
        if clock.relieved:
            raise self._refuse("behind_real_time", f"this stream is {behind:.1f} s behind real time: the server "
                               "lost capacity after admitting it, and the newest streams end so that the others "
                               "keep real time; retry (another replica)")
        if behind <= self.cfg.max_stream_lag_seconds:
            return
        why = (f"its messages are too small to read in real time: at most {self.cfg.max_messages_per_second:g} are "
               f"read a second (--max-messages-per-second), so send at least "
               f"{1000 / self.cfg.max_messages_per_second:.0f} ms of audio in each" if clock.own_pace else
               "the server is over capacity")
        raise self._refuse("behind_real_time", f"this stream is {behind:.1f} s behind real time (at most "
                           f"{self.cfg.max_stream_lag_seconds:g} s, --max-stream-lag-seconds): {why}; retry")

    def stream_ended(self, key: int) -> None:
        self._clocks.pop(key, None)


RELIEF_TICK_S = 1.0
RELIEF_MARGIN = 0.9  # the share of the measured capacity kept busy: the rest lets the kept streams catch up


@dataclass
class Relief:
    """When the server falls behind with the streams it admitted (capacity lost after admission),
    the newest streams are ended, as many as the shortfall measures, instead of every stream
    falling further behind until each hits --max-stream-lag-seconds. Each second it measures the
    audio seconds its live streams had processed in all (R: how many real-time streams it can
    carry now); once the worst server-caused lag passes half the limit, it keeps the oldest
    max(1, floor(0.9 R)) streams and ends the newest others; then it measures afresh."""
    last_at: float = 0.0
    last_processed: dict[int, float] = field(default_factory=dict)

    def tick(self, clocks: dict[int, StreamClock], now: float, threshold: float) -> None:
        if now - self.last_at < RELIEF_TICK_S:
            return
        elapsed, self.last_at = now - self.last_at, now
        active = {key: clock for key, clock in clocks.items()  # the streams that cost us, oldest first
                  if not clock.relieved and not clock.stalled(now)}
        previous, self.last_processed = self.last_processed, {k: c.processed_s for k, c in active.items()}
        if max((c.server_lag_s(now) for c in active.values()), default=0.0) <= threshold:
            return
        if not previous or elapsed > 2 * RELIEF_TICK_S:
            return  # nothing measured over the last tick yet
        carried = sum(c.processed_s - previous[key] for key, c in active.items() if key in previous) / elapsed
        keep = max(1, math.floor(RELIEF_MARGIN * carried))
        for clock in list(active.values())[keep:]:
            clock.relieved = True
        self.last_processed = {}  # measured afresh after the relief
