"""The compiled beam search engine (beam_search.cpp), built by `python -m engine.decoder.native.build`.

`NATIVE_ERROR` says why it cannot be used here (None where it can): the library was
not built (no compiler when `make` ran), or it predates its source.
"""

from pathlib import Path

import numpy as np
from pyctcdecode.constants import AVG_TOKEN_LEN, DEFAULT_UNK_LOGP_OFFSET, LOG_BASE_CHANGE_FACTOR

from engine.decoder.beam_search import (
    BEAM_PRUNE_LOGP,
    LOG_CLIP,
    TOKEN_MIN_LOGP,
    Search,
    SearchOptions,
    blank_skip_logp,
    token_kinds,
)

_SOURCE = Path(__file__).with_name("beam_search.cpp")


def _load():
    try:
        from engine.decoder.native import _beam_search
    except ImportError as e:
        return None, f"not built ({e}); run `python -m engine.decoder.native.build`"
    if Path(_beam_search.__file__).stat().st_mtime < _SOURCE.stat().st_mtime:
        return None, "out of date (built before beam_search.cpp changed); run `python -m engine.decoder.native.build`"
    return _beam_search, None


_native, NATIVE_ERROR = _load()


class NativeBeamSearch:
    name = "native"

    def __init__(self, tokens: list[str], lm_path, unigrams: list[str], blank_skip: float | None = None) -> None:
        if _native is None:
            raise RuntimeError(f"the native beam search is {NATIVE_ERROR}")
        kinds, texts = token_kinds(tokens)
        self._decoder = _native.Decoder(kinds, texts, str(lm_path) if lm_path else "", unigrams,
                                        token_min_logp=TOKEN_MIN_LOGP, beam_prune_logp=BEAM_PRUNE_LOGP,
                                        unk_offset=DEFAULT_UNK_LOGP_OFFSET, log_base_change=LOG_BASE_CHANGE_FACTOR,
                                        avg_token_len=float(AVG_TOKEN_LEN), log_clip=LOG_CLIP,
                                        blank_skip_logp=blank_skip_logp(blank_skip))

    def start(self, opts: SearchOptions) -> Search:
        """An utterance's search: a compiled object whose `advance` and `finish` release the GIL."""
        return _native.Utterance(self._decoder, opts.beam_width, opts.lm_weight, opts.word_bonus, opts.use_lm,
                                 opts.hotword_unigrams, opts.hotword_weight)

    @staticmethod
    def advance_many(searches: list[Search], logprobs: list[np.ndarray], threads: int) -> None:
        """On up to `threads` C++ threads, the GIL released once."""
        _native.advance_many(searches, logprobs, threads)
