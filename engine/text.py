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


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_DIGITS = re.compile(r"(\d+)(st|nd|rd|th)?\b")
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
            "twelve": "twelfth"}


def _cardinal(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _cardinal(n % 100))
    return _cardinal(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + _cardinal(n % 1000))


def spoken(text: str) -> str:
    """Written text (a second pass's: cased, punctuated, numbers as digits) in the first pass's
    spoken form: numbers of up to four digits as words, longer ones (phone numbers, codes) digit by
    digit, then `normalize`."""
    def words(m: re.Match) -> str:
        digits, ordinal = m.groups()
        if len(digits) > 4 or (digits.startswith("0") and len(digits) > 1):
            return " " + " ".join(_ONES[int(d)] for d in digits) + " "
        said = _cardinal(int(digits))
        if ordinal:
            *head, last = said.split()
            last = _ORDINAL.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
            said = " ".join([*head, last])
        return f" {said} "
    return normalize(_DIGITS.sub(words, text))
