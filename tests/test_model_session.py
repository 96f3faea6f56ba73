"""Batched model calls: padding a batch to a power of two (the CUDA path, run here on the CPU)
changes no stream's outputs, and warm-up meets every padded shape before traffic does."""

import numpy as np

from conftest import BUNDLED
from service.model_session import ModelSession, ModelSpec, batch_bucket


def test_padded_batches_give_each_stream_the_outputs_of_an_unpadded_call():
    spec = ModelSpec.load(BUNDLED)
    plain, padded = ModelSession(spec, "cpu"), ModelSession(spec, "cpu", pad_batches=True)
    assert not plain.pad_batches  # on the CPU padding would be real work
    rng = np.random.default_rng(3)
    chunks = [rng.normal(-4, 2, (spec.chunk_frames, spec.features.n_mels)).astype(np.float32) for _ in range(5)]
    states = [plain.initial_state() for _ in chunks]
    for _ in range(3):  # carried states too
        ours, theirs = padded.step_batch(chunks, states), plain.step_batch(chunks, states)
        assert len(ours) == len(theirs) == 5  # the 3 silent streams that made it 8 are dropped
        for (lp, st), (lp2, st2) in zip(ours, theirs):
            np.testing.assert_allclose(lp, lp2, atol=1e-5)
            for a, b in zip(st, st2):
                np.testing.assert_allclose(a, b, atol=1e-5)
        states = [st for _, st in theirs]


def test_warm_up_runs_every_padded_batch_size():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 32, 33)] == [1, 2, 4, 8, 32, 64]
    spec = ModelSpec.load(BUNDLED)
    assert ModelSession(spec, "cpu", pad_batches=True).warm_up(20) == [1, 2, 4, 8, 16, 32]
    assert ModelSession(spec, "cpu").warm_up(20) == [1]
