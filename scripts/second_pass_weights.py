"""The second pass's gate and weights searched for a first-pass model, on clips held out from the
ones `models.evaluate --limit N` reports.

    python -m scripts.second_pass_weights --model DIR --set NAME=MANIFEST [--set ...] \
        [--reported 200] [--limit 100]

DIR holds a second pass (`python -m export.second_pass --model-dir DIR`). Of each set, the clips
`models.evaluate --limit REPORTED` reads are left out and --limit of the rest, evenly spaced,
are heard once: the first pass's beam+LM final and its confidence, the second pass's texts with
their own score, the KenLM's and the first pass's support (`Recognizer._weigh`'s three terms).
Then every gate (`keep_first_above`) and pair of weights (`lm_weight`, `ctc_weight`) of a grid
chooses each final offline, and the WER summed over the sets is printed, best first, beside
the directory's own settings.
"""

import argparse
import itertools
from pathlib import Path

import jiwer

from engine import second_pass
from engine.decoder.ctc import CtcDecoder, DecodeOptions
from engine.manifest import read_audio, read_manifest, spread
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession, one_blas_thread
from engine.recognizer import Recognizer
from engine.second_pass import Utterance
from engine.text import normalize, spoken

GATES = (0.8, 0.85, 0.9, 0.95, 1.01)  # 1.01: every final decoded again
LM_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5)
CTC_WEIGHTS = (0, 2, 4, 6, 8, 10, 14)


def heard(recognizer: Recognizer, rows: list[dict]) -> list[tuple]:
    """Each clip's (reference, first pass's text, its confidence, whether the pass may hear it,
    [(the pass's text, its score, the KenLM's, the first pass's support)])."""
    spec, out = recognizer.spec, []
    opts = DecodeOptions(beam_width=spec.beam_width, lm_weight=spec.lm_weight, word_bonus=spec.word_bonus)
    for row in rows:
        audio = read_audio(row["audio"], spec.features.sample_rate)
        logprobs = recognizer.utterance_logprobs(audio)
        first = recognizer.decoder.decode(logprobs, opts)[0]
        found = recognizer.second_pass.transcribe([Utterance(audio, (), (first.text,))])[0]
        said = [(spoken(text), score) for text, score in found]
        terms = [(words, score, recognizer.decoder.text_score(words), recognizer.decoder.path_score(words, logprobs))
                 for words, score in said]
        fits = len(audio) <= recognizer.second_pass.max_seconds * spec.features.sample_rate
        out.append((normalize(row["text"]), first.text, first.confidence, fits, terms))
    return out


def wer(clips: list[tuple], gate: float, lm: float, ctc: float) -> float:
    """The finals `Recognizer.rewrite_many` would give at these settings (its `_due` gate and
    `_weigh` sum, here over terms computed once for the whole grid)."""
    hyps = [max(terms, key=lambda t: t[1] + lm * t[2] + ctc * t[3])[0] if fits and conf < gate and terms else first
            for _, first, conf, fits, terms in clips]
    return 100 * jiwer.wer([c[0] for c in clips], hyps)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.second_pass_weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model directory with a second pass")
    p.add_argument("--set", action="append", required=True, metavar="NAME=MANIFEST")
    p.add_argument("--reported", type=int, default=200, help="the clips models.evaluate --limit reports: left out")
    p.add_argument("--limit", type=int, default=100, help="clips of each set heard, of the rest")
    a = p.parse_args()
    spec = ModelSpec.load(a.model)
    if not spec.second_pass:
        p.error(f"{a.model}: no second pass (python -m export.second_pass --model-dir {a.model})")
    one_blas_thread()
    recognizer = Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec),
                            second_pass=second_pass.load(spec.directory, spec.second_pass))
    sets = {}
    for item in a.set:
        name, path = item.split("=", 1)
        rows = read_manifest(path)
        reported = {r["audio"] for r in spread(rows, a.reported)}
        sets[name] = heard(recognizer, spread([r for r in rows if r["audio"] not in reported], a.limit))
        print(f"{name}: {len(sets[name])} clips; first pass WER "
              f"{100 * jiwer.wer([c[0] for c in sets[name]], [c[1] for c in sets[name]]):.1f}%", flush=True)
    ours = recognizer.second_pass
    own = (ours.keep_first_above, ours.lm_weight, ours.ctc_weight)
    ranked = []
    for settings in sorted({*itertools.product(GATES, LM_WEIGHTS, CTC_WEIGHTS), own}):
        each = [wer(clips, *settings) for clips in sets.values()]
        ranked.append((sum(each), settings, each))
    ranked.sort()
    print("| keep_first_above | lm_weight | ctc_weight | summed WER | " + " | ".join(sets) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in sets) + " |")
    for total, (gate, lm, ctc), each in ranked[:12] + [r for r in ranked[12:] if r[1] == own]:
        mark = " (the directory's)" if (gate, lm, ctc) == own else ""
        print(f"| {gate:g}{mark} | {lm:g} | {ctc:g} | {total:.1f} | " + " | ".join(f"{x:.1f}" for x in each) + " |")


if __name__ == "__main__":
    main()
