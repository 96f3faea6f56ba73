"""Audio parsing and the streaming front-end: any chunking gives the same result."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.audio import AudioError, AudioFormat, Encoding, PcmStream, decode_unary
from service.features import FeatureConfig, LogMel, StreamingFeatures, logmel_utterance

LOGMEL = LogMel(FeatureConfig())
SIGNAL = np.random.default_rng(0).normal(0, 0.1, 16000 + 123).astype(np.float32)


def split(data, cuts):
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=12))
def test_features_do_not_depend_on_chunking(cuts):
    stream = StreamingFeatures(LOGMEL)
    chunked = np.concatenate([stream.accept(c) for c in split(SIGNAL, cuts)] + [stream.flush()])
    # Equal up to float rounding: BLAS sums a different number of rows per call.
    np.testing.assert_allclose(chunked, logmel_utterance(LOGMEL, SIGNAL), atol=1e-5)


def test_every_sample_is_covered_by_a_frame():
    cfg = LOGMEL.cfg
    for n in (1, 399, 400, 401, 16000, 16001):
        frames = len(logmel_utterance(LOGMEL, np.ones(n, np.float32)))
        assert (frames - 1) * cfg.hop_length + cfg.win_length >= n


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=12), st.sampled_from([8000, 16000, 44100]))
def test_pcm_byte_splits_do_not_matter(cuts, rate):
    pcm = (np.resize(SIGNAL, rate // 2) * 32767).astype("<i2").tobytes()
    stream = PcmStream(AudioFormat(Encoding.LINEAR16, rate, 1), 16000)
    chunked = np.concatenate([stream.accept(c) for c in split(pcm, cuts)] + [stream.finish()])
    whole, seconds = decode_unary(pcm, Encoding.LINEAR16, rate, 1, 16000)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert seconds == pytest.approx(0.5, abs=1e-3)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(list(Encoding.values())), st.integers(-1, 200000),
       st.integers(0, 9))
def test_parsing_raises_only_audio_error(data, encoding, rate, channels):
    try:
        samples, _ = decode_unary(data, encoding, rate, channels, 16000)
    except AudioError:
        return
    assert samples.dtype == np.float32 and np.all(np.isfinite(samples))
