"""`buffered`: a full-context graph (wav2vec2, Conformer CTC, ...) runs on windows of left
context + chunk + right context, and only the chunk's outputs are kept, as NeMo's buffered CTC
inference and the Hugging Face chunked pipeline do. A stream's state is its last left + right
input frames; the outputs lag the input by the right context."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.features import FeatureConfig, normalize_window


@dataclass(frozen=True)
class Buffered:
    """The contexts, in input frames (multiples of the subsampling factor)."""
    left_frames: int
    right_frames: int

    @classmethod
    def parse(cls, directory: Path, meta: dict, features: FeatureConfig, window_ms) -> "tuple[Buffered, int, int]":
        streaming = meta["streaming"]
        sub, ms = meta["subsampling_factor"], features.hop_length * 1000 / features.sample_rate
        left, chunk, right = (round(o / ms) if o is not None else d for o, d in zip(
            window_ms, (streaming["left_frames"], meta["chunk_frames"], streaming["right_frames"])))
        if any(v % sub for v in (left, chunk, right)) or chunk <= 0 or right < sub:
            raise ValueError(f"{directory}: buffered streaming needs left context, chunk and right context "
                             f"in multiples of {sub * ms:g} ms, the right context at least that, "
                             f"not {left * ms:g}/{chunk * ms:g}/{right * ms:g} ms")
        return cls(left, right), chunk, right

    def description(self, spec) -> str:
        ms = 1000 * spec.features.hop_length / spec.features.sample_rate
        return (f"buffered: {self.left_frames * ms:g} ms left context, {spec.chunk_frames * ms:g} ms chunk, "
                f"{self.right_frames * ms:g} ms right context")

    def initial_state(self, session) -> list[np.ndarray]:
        """Left + right context frames of silence."""
        return [np.tile(session.silence, (self.left_frames + self.right_frames, 1))]

    def step_batch(self, session, features: list[np.ndarray], states: list[list[np.ndarray]]
                   ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """Each stream's chunk cut into pieces of chunk_frames on the stream's own grid (so a
        unary request's block gives what the same audio streamed gives), every piece's window
        run in one batch per window length, the middle outputs kept."""
        spec = session.spec
        chunk, sub = spec.chunk_frames, spec.subsampling_factor
        context = self.left_frames + self.right_frames
        extended = [np.concatenate([st[0], f]) for f, st in zip(features, states)]
        n = len(features[0])
        pieces = [(start, min(chunk, n - start)) for start in range(0, n, chunk)]
        kept: list[dict[int, np.ndarray]] = [{} for _ in features]  # per stream: piece start -> outputs
        for size in sorted({size for _, size in pieces}):
            starts = [start for start, s in pieces if s == size]
            windows = [normalize_window(spec.features, ext[start:start + context + size])
                       for ext in extended for start in starts]
            keep = slice(self.left_frames // sub, (self.left_frames + size) // sub)
            logprobs = session.run([spec.io.logprobs], spec.io.feeds(np.stack(windows)))[0]
            if logprobs.shape[1] < keep.stop:
                raise RuntimeError(f"the model gave {logprobs.shape[1]} output frames for a window of "
                                   f"{len(windows[0])} input frames; the chunk's outputs end at frame {keep.stop}")
            for i, lp in enumerate(logprobs):
                kept[i // len(starts)][starts[i % len(starts)]] = lp[keep]
        return [(np.concatenate([pieces_out[start] for start, _ in pieces]), [ext[len(ext) - context:]])
                for pieces_out, ext in zip(kept, extended)]
