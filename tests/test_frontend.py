"""Audio parsing and the streaming front-end: any chunking gives the same result."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.features import FeatureConfig, StreamingFeatures, frontend, logmel_utterance, normalize_window
from engine.features.mel import slaney_filterbank
from service.session.audio import AudioError, AudioFormat, Encoding, PcmStream, decode_unary

LOGMEL = frontend(FeatureConfig())
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


# The field's front-ends, as model directories declare them (export/onnx_ctc.py, export/huggingface.py).
KALDI = FeatureConfig(kind="kaldi", n_fft=512, win_length=400, hop_length=160, n_mels=80, fmin=20.0, fmax=7600.0,
                      preemph=0.97, scale=32768.0)
NEMO = FeatureConfig(kind="nemo", n_fft=512, win_length=400, hop_length=160, n_mels=80, fmin=0.0, fmax=8000.0,
                     preemph=0.97, normalize="per_feature")
WAVEFORM = FeatureConfig(kind="waveform", hop_length=320, win_length=320, normalize="utterance")


def test_kaldi_fbank_matches_kaldi_native_fbank():
    """sherpa-onnx computes its models' features with kaldi-native-fbank; ours must match it."""
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins, opts.mel_opts.low_freq, opts.mel_opts.high_freq = 80, 20.0, -400.0
    reference = knf.OnlineFbank(opts)
    reference.accept_waveform(16000, (SIGNAL * 32768).tolist())
    reference.input_finished()
    expected = np.array([reference.get_frame(i) for i in range(reference.num_frames_ready)])
    ours = StreamingFeatures(frontend(KALDI)).accept(SIGNAL)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-3)


@pytest.mark.parametrize("cfg", [KALDI, NEMO, WAVEFORM], ids=["kaldi", "nemo", "waveform"])
@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(0, 10**6), max_size=8))
def test_the_fields_front_ends_do_not_depend_on_chunking(cfg, cuts):
    """NeMo's pre-emphasis runs across the whole stream: chunk edges must not show."""
    fe = frontend(cfg)
    stream = StreamingFeatures(fe)
    chunked = np.concatenate([stream.accept(c) for c in split(SIGNAL, cuts)] + [stream.flush()])
    np.testing.assert_allclose(chunked, logmel_utterance(fe, SIGNAL), atol=1e-4)
    assert chunked.shape[1] == cfg.width


def test_nemo_mel_centres_frames_on_hops_and_puts_a_tone_in_its_band():
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    feats = logmel_utterance(frontend(NEMO), tone)
    assert len(feats) == 1 + (16000 + 200 - 400) // 160 + 1  # half a window of lead-in, as a centred STFT
    band = np.argmax(feats[10:-10].mean(axis=0))
    edges = slaney_filterbank(NEMO)[:, band].nonzero()[0] * 16000 / 512
    assert edges.min() <= 1000 <= edges.max()


def test_window_normalization_as_nemo_and_transformers_do_it():
    rng = np.random.default_rng(0)
    window = rng.normal(3.0, 2.0, (50, 80)).astype(np.float32)
    per_feature = normalize_window(NEMO, window)
    np.testing.assert_allclose(per_feature.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(per_feature.std(axis=0, ddof=1), 1, atol=1e-4)
    transformers = pytest.importorskip("transformers")
    samples = rng.normal(0.2, 0.3, (10, 320)).astype(np.float32)
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    expected = extractor(samples.reshape(-1), sampling_rate=16000, return_tensors="np").input_values[0]
    np.testing.assert_allclose(normalize_window(WAVEFORM, samples).reshape(-1), expected, atol=1e-5)
