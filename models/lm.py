"""Build the KenLM n-gram language model and its unigram list from training text.

    python -m models.lm --manifest data/corpus/train.jsonl --grammar-sentences 50000 \
        --english --wordnet --wordfreq 50000 --out DIR

Text: the manifests' transcripts, sentences drawn from the training side of the
domain grammar and of the fortune files (never a held-out one), WordNet's usage
examples (Debian's wordnet-base) and the most frequent English words (wordfreq),
each word on its own line so that a word the rest never used still has a
unigram probability instead of the unknown word's.

A deployment's own domain (what Riva and Google call a custom language model or
phrase set): --domain FILE adds its sentences or phrases, one a line, repeated
--domain-weight times so that they outweigh the general text, and --model DIR
writes a copy of that model directory with the new LM in it:

    python -m models.lm --domain phrases.txt --grammar-sentences 50000 --english \
        --wordnet --wordfreq 50000 --model models/pretrained/default --out my-model

Writes OUT/lm.bin (KenLM binary) and OUT/unigrams.txt (one word a line, for the
decoder). `lmplz` and `build_binary` are compiled once from the `kenlm`
source package on PyPI into third_party/kenlm (needs cmake, a C++ compiler,
Boost and zlib headers; see README).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from engine.decoder.native.build import kenlm_source
from engine.text import normalize
from models import sentences


def kenlm_tools() -> Path:
    """The directory holding lmplz and build_binary, compiling them if needed."""
    source = kenlm_source()
    bin_dir = source / "build" / "bin"
    if (bin_dir / "lmplz").exists() and (bin_dir / "build_binary").exists():
        return bin_dir
    build = source / "build"
    build.mkdir(exist_ok=True)
    print("compiling lmplz and build_binary (about a minute)", file=sys.stderr)
    subprocess.run(["cmake", "..", "-DCMAKE_BUILD_TYPE=Release"], cwd=build, check=True)
    subprocess.run(["make", "-j2", "lmplz", "build_binary"], cwd=build, check=True)
    return bin_dir


def build_lm(texts: list[str], out: Path, order: int) -> None:
    tools = kenlm_tools()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        arpa = Path(tmp) / "lm.arpa"
        with open(arpa, "w") as f:
            # --discount_fallback: a small domain corpus lacks the counts-of-counts
            # that modified Kneser-Ney discounting expects.
            subprocess.run([str(tools / "lmplz"), "-o", str(order), "--discount_fallback", "-S", "20%"],
                           input="\n".join(texts) + "\n", text=True, stdout=f, check=True)
        # A quantized trie keeps the bundled LM small (a few MB) at a negligible cost in accuracy.
        subprocess.run([str(tools / "build_binary"), "-q", "8", "-b", "8", "trie", str(arpa), str(out / "lm.bin")],
                       check=True)
    words = Counter(w for t in texts for w in t.split())
    (out / "unigrams.txt").write_text("\n".join(sorted(words)) + "\n")
    print(f"{out / 'lm.bin'}: order {order}, {len(texts)} sentences, {len(words)} words")


def domain_sentences(path: Path) -> list[str]:
    """A user's sentences or phrases, one a line, numbers spelled out as they are spoken."""
    return [text for text in (normalize(sentences.spell_numbers(line)) for line in open(path)) if text]


def copy_model_dir(model: Path, out: Path) -> None:
    """OUT becomes a copy of the model directory, ready for the new lm.bin and unigrams.txt."""
    shutil.copytree(model, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("lm.bin", "unigrams.txt"))
    meta = json.loads((out / "model.json").read_text())
    meta.setdefault("decoder", {}).update(lm="lm.bin", unigrams="unigrams.txt")
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", nargs="+", default=[], help="JSONL manifests whose text trains the LM")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--grammar-sentences", type=int, default=0, help="add this many training-side grammar sentences")
    p.add_argument("--english", action="store_true",
                   help="add the training side of the plain English sentences (models.sentences)")
    p.add_argument("--wordnet", action="store_true", help="add WordNet's usage examples (Debian: wordnet-base)")
    p.add_argument("--wordfreq", type=int, default=0, metavar="N", help="add the N most frequent English words")
    p.add_argument("--domain", type=Path, action="append", default=[], metavar="FILE",
                   help="a deployment's sentences or phrases, one a line (repeatable)")
    p.add_argument("--domain-weight", type=int, default=20, help="times each domain line counts (default 20)")
    p.add_argument("--model", type=Path, help="write a copy of this model directory, with the new LM, to --out")
    p.add_argument("--order", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.domain_weight < 1:
        p.error("--domain-weight must be at least 1")
    if a.model and not (a.model / "model.json").is_file():
        p.error(f"--model {a.model}: not a model directory (no model.json)")
    if a.model and a.out.exists() and any(a.out.iterdir()):
        p.error(f"--out {a.out}: exists and is not empty; give a new directory")
    texts = [json.loads(line)["text"] for m in a.manifest for line in open(m) if line.strip()]
    texts += sentences.generate(a.grammar_sentences, a.seed, held_out=False)
    if a.english:
        texts += [t for t in sentences.english_sentences() if not sentences.is_held_out(t)]
    if a.wordnet:
        texts += sentences.wordnet_sentences()
    texts += sentences.frequent_words(a.wordfreq) if a.wordfreq else []
    for path in a.domain:
        domain = domain_sentences(path)
        if not domain:
            p.error(f"--domain {path}: no words in it")
        texts += domain * a.domain_weight
        print(f"{path}: {len(domain)} lines, each counted {a.domain_weight} times")
    if not texts:
        p.error("no text: give --manifest, --grammar-sentences, --english, --wordnet, --wordfreq or --domain")
    if a.model:
        copy_model_dir(a.model, a.out)
    build_lm(texts, a.out, a.order)


if __name__ == "__main__":
    main()
