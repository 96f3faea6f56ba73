"""Make a labelled canary set: a few held-out clips and their transcripts.

    python -m models.canaries --out models/pretrained/default/canaries \\
        --take unseen_family=data/corpus/valid_unseen_family.jsonl:10 --take seen_voices=data/corpus/valid_seen.jsonl:10

Copies the chosen clips as 16 kHz FLAC into OUT and writes OUT/manifest.jsonl
(`audio` relative to OUT, `text`, `duration`, `source`, `voice`, `set`). Only
synthesized audio belongs here: FSDD recordings are read in place, never copied.
"""

import argparse
import json
import random
from pathlib import Path

import soundfile as sf

from engine.manifest import read_manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--take", action="append", required=True, metavar="SET=MANIFEST:COUNT")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in a.take:
        name, rest = item.split("=", 1)
        manifest, count = rest.rsplit(":", 1)
        pool = read_manifest(manifest)
        if any(r["source"] == "fsdd" for r in pool):
            p.error(f"{manifest}: FSDD recordings may not be copied into the repository")
        for r in rng.sample(pool, int(count)):
            audio, rate = sf.read(r["audio"], dtype="int16")
            name_out = f"{name}_{len(rows):03d}.flac"
            sf.write(a.out / name_out, audio, rate, format="FLAC")
            rows.append({**r, "audio": name_out, "set": name})
    with open(a.out / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{a.out}: {len(rows)} clips, {sum(r['duration'] for r in rows):.1f} s")


if __name__ == "__main__":
    main()
