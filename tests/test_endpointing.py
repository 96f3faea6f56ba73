"""The endpoint rules on controlled model output (40 ms frames)."""

import numpy as np

from engine.endpointing import MAX_UTTERANCE, SILENCE_AFTER_SPEECH, SILENCE_NO_SPEECH, EndpointConfig, Endpointer

BLANK, A = 0, 3


def frames(n: int, token: int) -> np.ndarray:
    logprobs = np.full((n, 29), np.log(0.01 / 28))
    logprobs[:, token] = np.log(0.99)
    return logprobs


def run(endpointer: Endpointer, *parts) -> list[str | None]:
    """Feeds (n frames, token) parts in 4-frame chunks; returns what fired per chunk."""
    fired = []
    for n, token in parts:
        x = frames(n, token)
        fired += [endpointer.update(x[i:i + 4]) for i in range(0, n, 4)]
    return fired


def endpointer(**kw) -> Endpointer:
    return Endpointer(EndpointConfig(**kw), 0.04, BLANK)


def test_trailing_silence_after_speech_ends_the_utterance():
    fired = run(endpointer(), (20, A), (40, BLANK))  # 0.8 s speech, 1.6 s silence
    first = next(i for i, r in enumerate(fired) if r)
    assert fired[first] == SILENCE_AFTER_SPEECH
    assert (first + 1) * 4 - 20 == 32  # after 1.2 s (30 frames), at the end of the chunk holding frame 30


def test_silence_without_speech_drops_the_utterance_later():
    fired = run(endpointer(), (80, BLANK))
    assert fired.index(SILENCE_NO_SPEECH) == 60 // 4 - 1  # 2.4 s


def test_long_speech_is_cut_at_the_maximum():
    fired = run(endpointer(max_utterance_s=2.0), (100, A))
    assert fired.index(MAX_UTTERANCE) == 50 // 4  # the chunk where 2 s is reached


def test_uncertain_frames_are_not_silence():
    e = endpointer()
    x = frames(60, BLANK)
    x[:, BLANK], x[:, A] = np.log(0.6), np.log(0.4)  # blank is likeliest but below the 0.8 threshold
    assert e.update(frames(4, A)) is None and e.update(x) is None


def test_disabled_never_fires():
    assert set(run(endpointer(enabled=False), (20, A), (200, BLANK))) == {None}
