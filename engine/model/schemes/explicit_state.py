"""`explicit_state` (ours): the graph takes and returns its own state tensors (model.json's
`states`: names, shapes, batch axis), carried between chunks."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.features import FeatureConfig


def batch_bucket(n: int) -> int:
    """The padded batch size for n streams: the next power of two."""
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class ExplicitState:
    @classmethod
    def parse(cls, directory: Path, meta: dict, features: FeatureConfig, window_ms) -> "tuple[ExplicitState, int, int]":
        if any(v is not None for v in window_ms):
            raise ValueError(f"{directory}: context and chunk overrides apply to buffered models only; this "
                             "model streams with explicit state")
        if features.normalize != "none":
            raise ValueError(f"{directory / 'model.json'}: features.normalize applies to buffered models only")
        return cls(), meta["chunk_frames"], meta.get("lookahead_frames", 0)

    def description(self, spec) -> str:
        return "explicit state"

    def initial_state(self, session) -> list[np.ndarray]:
        """The graph's zeros."""
        return [np.zeros(s.shape, np.float32) for s in session.spec.states]

    def step_batch(self, session, features: list[np.ndarray], states: list[list[np.ndarray]]
                   ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        spec, n = session.spec, len(features)
        if session.pad_batches and batch_bucket(n) > n:
            pad = batch_bucket(n) - n
            features = list(features) + [np.zeros_like(features[0])] * pad
            states = list(states) + [self.initial_state(session) for _ in range(pad)]
        # The batch's states go in and come out through the session's scratch arrays, which the
        # next call overwrites: each stream keeps a copy of its own slice.
        feeds, into = spec.io.feeds(np.stack(features)), {}
        for i, state in enumerate(spec.states):
            shape = tuple(len(states) if axis == state.batch_axis else d for axis, d in enumerate(state.shape))
            dtype = states[0][i].dtype
            feeds[state.input] = np.concatenate([st[i] for st in states], axis=state.batch_axis,
                                                out=session.scratch(state.input, shape, dtype))
            into[state.output] = session.scratch(state.output, shape, dtype)
        logprobs, *next_states = session.run([spec.io.logprobs, *(s.output for s in spec.states)], feeds, into)
        return [(logprobs[b], [x[(slice(None),) * s.batch_axis + (slice(b, b + 1),)].copy()
                               for x, s in zip(next_states, spec.states)])
                for b in range(n)]
