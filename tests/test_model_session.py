"""Batched model calls: padding a batch to a power of two (the CUDA path, run here on the CPU)
changes no stream's outputs, and warm-up meets every padded shape before traffic does."""

import json
import subprocess
import sys

import numpy as np
from conftest import BUNDLED, SAMPLES

from engine.model.directory import ModelSpec
from engine.model.session import ModelSession, batch_bucket


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


def test_a_streams_state_outlives_the_calls_that_follow():
    """The session reuses its arrays for a batch's states in and out: what a call gave a stream
    must not change with the calls that come after it (other streams, other batch sizes)."""
    spec = ModelSpec.load(BUNDLED)
    shared, alone = ModelSession(spec, "cpu"), ModelSession(spec, "cpu")
    rng = np.random.default_rng(4)
    ours, others = ([rng.normal(-4, 2, (spec.chunk_frames, spec.features.n_mels)).astype(np.float32)
                     for _ in range(3)] for _ in range(2))
    state, expected = shared.initial_state(), alone.initial_state()
    for chunk in ours:
        logprobs, state = shared.step(chunk, state)
        kept = [a.copy() for a in state]
        shared.step_batch(others, [shared.initial_state() for _ in others])  # a bigger batch after ours
        assert all(np.array_equal(a, b) for a, b in zip(state, kept))
        want, expected = alone.step(chunk, expected)
        np.testing.assert_array_equal(logprobs, want)


def test_warm_up_runs_every_padded_batch_size():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 32, 33)] == [1, 2, 4, 8, 32, 64]
    spec = ModelSpec.load(BUNDLED)
    assert ModelSession(spec, "cpu", pad_batches=True).warm_up(20) == [1, 2, 4, 8, 16, 32]
    assert ModelSession(spec, "cpu").warm_up(20) == [1]


def test_the_bundled_int8_products_cannot_saturate_on_any_x86_kernel():
    """ONNX Runtime's u8 x s8 products on x86 without VNNI (AVX2, AVX-512BW) multiply-add pairs
    of products into 16 bits with saturation (vpmaddubsw); VNNI and AMX add them in 32 bits. With
    every int8 weight within +-64 no pair can pass 2 * 255 * 64 = 32640 < 32767, so all kernels
    compute the same integer products, and a CPU's kind cannot change a transcript through them
    (export quantizes with 7-bit weights: `reduce_range`)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(BUNDLED / "model.onnx")).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    into_matmul = {i for n in graph.node if n.op_type == "MatMul" for i in n.input}
    int8 = [weights[n.input[0]] for n in graph.node
            if n.op_type == "DequantizeLinear" and n.output[0] in into_matmul
            and weights.get(n.input[0], np.zeros(0)).dtype == np.int8]
    assert len(int8) >= 16  # the encoder's and the head's matrix products are int8
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in int8) <= 64


def test_the_cpu_kinds_check_reads_what_it_wrote(tmp_path):
    """`scripts.cpu_kinds` as on two machines (here one): the same graph over the same features
    compares equal, and a graph run on other features does not."""
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(SAMPLES / n), "text": ""}) + "\n"
                                for n in ("what_time.wav", "phone.flac")))

    def cpu_kinds(*args: str) -> str:
        run = subprocess.run([sys.executable, "-m", "scripts.cpu_kinds", *map(str, args)], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stdout
    cpu_kinds("features", "--model", BUNDLED, "--manifest", manifest, "--out", tmp_path / "f.npz")
    for name in ("here", "there"):
        cpu_kinds("run", "--model", BUNDLED, "--features", tmp_path / "f.npz", "--out", tmp_path / f"{name}.npz")
    same = cpu_kinds("compare", tmp_path / "here.npz", tmp_path / "there.npz", "--model", BUNDLED)
    assert "2 clips, largest log-prob difference 0.00e+00, greedy texts that differ: 0" in same, same
    other = dict(np.load(tmp_path / "there.npz"))
    other["000_what_time"] = other["000_what_time"][::-1]  # as if the other machine had heard it backwards
    np.savez(tmp_path / "other.npz", **other)
    differ = cpu_kinds("compare", tmp_path / "here.npz", tmp_path / "other.npz", "--model", BUNDLED)
    assert "greedy texts that differ: 1 (000_what_time)" in differ, differ
