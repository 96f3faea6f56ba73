"""Scoring a labelled canary: both texts normalized alike, edits counted by jiwer."""

import jiwer

from ctc_asr.v1 import asr_pb2
from service.text import normalize

DEFAULT_SET = "default"


def score(reference: str, hypothesis: str, set_name: str) -> asr_pb2.CanaryScore:
    ref, hyp = normalize(reference), normalize(hypothesis)
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    word_errors = words.substitutions + words.deletions + words.insertions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    ref_words, ref_chars = len(ref.split()), len(ref)
    return asr_pb2.CanaryScore(set=set_name or DEFAULT_SET, word_errors=word_errors, reference_words=ref_words,
                               char_errors=char_errors, reference_chars=ref_chars,
                               wer=word_errors / ref_words, cer=char_errors / ref_chars)
