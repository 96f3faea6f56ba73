"""Text normalization shared by training, decoding and canary scoring.

The models are character models over a-z, apostrophe and space; every text
that is compared or trained on goes through `normalize` first so that
references and hypotheses are scored the same way.
"""

import re

_NOT_IN_VOCAB = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")


def normalize(text: str) -> str:
    """Lower-case, map anything outside the vocabulary to a space, squeeze spaces."""
    text = text.lower().replace("-", " ")
    text = _NOT_IN_VOCAB.sub(" ", text)
    return _SPACES.sub(" ", text).strip(" '")
