"""Text normalization shared by training, decoding and canary scoring.

The models are character models over a-z, apostrophe and space; every text
that is compared or trained on goes through `normalize` first so that
references and hypotheses are scored the same way.
"""

import re

from text_to_num import alpha2digit

_NOT_IN_VOCAB = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")


def normalize(text: str) -> str:
    """Lower-case, map anything outside the vocabulary to a space, squeeze spaces."""
    text = text.lower().replace("-", " ")
    text = _NOT_IN_VOCAB.sub(" ", text)
    return _SPACES.sub(" ", text).strip(" '")


_DIGIT_RUN = re.compile(r"\b(?:\d|0\d*)(?: (?:\d|0\d*)\b)+")


def format_numbers(text: str) -> str:
    """Spoken numbers as digits (text2num): "twenty one" -> "21"; digits spoken one by one are
    one number ("three two zero" -> "320", which text2num leaves as "3 2 0")."""
    return _DIGIT_RUN.sub(lambda m: m.group(0).replace(" ", ""), alpha2digit(text, "en"))
