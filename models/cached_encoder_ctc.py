"""A Whisper encoder that streams natively: block-causal attention over cached keys and values.

Each block of `block_frames` feature frames (320 ms) is encoded once. Its frames attend to
themselves, to the rest of their block, and to the keys and values of up to `left_frames` of
past that every layer keeps as state (icefall's streaming Zipformer, WeNet's U2 chunk masks,
NeMo's cache-aware FastConformer carry their caches the same way). The windowed family
(models/encoder_ctc.py) encodes every frame about 5.5 times instead.

What changes against Whisper, and why:
- The convolutions are made causal by padding on the left only: the same weights on the same
  frames, so each output equals Whisper's one encoder frame (20 ms) later.
- Positions count on from the stream's start, modulo Whisper's 1,500: a stream is endless, and
  cached keys keep the positions they were computed at. `position_jitter` trains on utterances
  starting anywhere in that cycle, so that the wrap every 30 s is something the model has seen.
- A frame's past is bounded (`left_frames`) and its future is its own block's end: no look-ahead
  beyond the block, so a word waits at most one block for the model.

State (model.json's `states`, batch axis 0): the last 4 feature frames for the convolutions,
the stream's position, and every layer's keys and values of the last `left_frames` / 2 encoder
frames, each a state of its own, split by head (the layout attention reads). Whole-utterance
definition: one call over all frames from the zero state. Chunks of whole blocks (the last one
may be short) compute the same, since blocks fall on one grid.

Training keeps the convolutions and the bottom blocks frozen (their outputs, computed with the
mask the stream runs, cached per utterance) and fine-tunes the top `trainable_layers` blocks
with the head.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.features import FeatureConfig
from models.encoder_ctc import SUBSAMPLING, WhisperCTC
from models.model import TOKENS
from models.whisper import Block, WhisperEncoder

POSITIONS = 1500  # Whisper's table: 30 s of encoder frames
CONV_CONTEXT = 4  # feature frames of past the two causal convolutions need
MASKED = -1e4  # an additive attention mask's "never" (finite: padded rows stay finite under bf16 autocast)


@dataclass(frozen=True)
class CachedEncoderCTCConfig:
    kind: str = "whisper_ctc_cached"
    encoder: str = "tiny.en"
    block_frames: int = 32  # feature frames (10 ms) encoded at once; the service's chunk is a multiple
    left_frames: int = 256  # feature frames of past every block attends to (cached keys and values)
    trainable_layers: int = 2  # the encoder's top blocks (and final LayerNorm) fine-tuned with the head
    position_jitter: bool = False  # train on utterances starting anywhere in the position cycle
    head_hidden: int = 512
    dropout: float = 0.1
    whisper_floor: float = -7.0  # the front-end's fixed log10 floor (FeatureConfig.whisper_floor)
    vocab_size: int = len(TOKENS)

    def __post_init__(self) -> None:
        for name in ("left_frames", "block_frames"):
            value = getattr(self, name)
            if value <= 0 or value % SUBSAMPLING:
                raise ValueError(f"{name} must be a positive multiple of {SUBSAMPLING}, not {value}")
        if self.left_frames // 2 > POSITIONS:
            raise ValueError("left_frames may hold at most 30 s (Whisper's positions)")
        if self.trainable_layers < 0:
            raise ValueError("trainable_layers must not be negative")

    @property
    def lookahead_frames(self) -> int:
        return 0  # a block's last frame sees no future (the causal convolutions delay outputs by 20 ms)

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig.whisper(whisper_floor=self.whisper_floor)


class CachedEncoderCTC(WhisperCTC):
    config = CachedEncoderCTCConfig

    def __init__(self, cfg: CachedEncoderCTCConfig, encoder: WhisperEncoder | None = None) -> None:
        super().__init__(cfg, encoder)
        if cfg.position_jitter and self.frozen_layers:
            raise ValueError("position_jitter needs every block trainable (frozen blocks are cached at position 0)")
        self.block = cfg.block_frames // 2  # in encoder frames (20 ms)
        self.left = cfg.left_frames // 2

    # -- shared by the stream and training ---------------------------------------------------

    def convolve(self, frames: torch.Tensor, conv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) log-mel, T even, after 4 frames of past (less the silence frame) ->
        (B, T/2, width) encoder inputs without positions, and the next 4 frames of past.

        Each block is convolved on its own (its frames and the 4 before them), so that every call
        convolves inputs of one length: chunked and whole then agree to the last bit."""
        b, n_mels, t = frames.shape
        size = self.cfg.block_frames
        blocks = torch.div(t + size - 1, size, rounding_mode="floor")
        buf = torch.cat([conv_cache, frames - self.silence[:, None]], dim=2)
        padded = nn.functional.pad(buf, (0, blocks * size - t))
        idx = torch.arange(blocks)[:, None] * size + torch.arange(size + CONV_CONTEXT)[None, :]
        win = padded[:, :, idx].permute(0, 2, 1, 3).reshape(-1, n_mels, size + CONV_CONTEXT)
        x = nn.functional.gelu(nn.functional.conv1d(win + self.silence[:, None], self.encoder.conv1.weight,
                                                    self.encoder.conv1.bias))
        x = nn.functional.gelu(nn.functional.conv1d(x, self.encoder.conv2.weight, self.encoder.conv2.bias, stride=2))
        x = x.reshape(b, -1, x.shape[1], size // 2).permute(0, 1, 3, 2).reshape(b, -1, x.shape[1])
        return x[:, : t // 2], buf[:, :, buf.shape[2] - CONV_CONTEXT:]

    def position(self, x: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Adds Whisper's positions from `start` (B, 1) on, modulo its 1,500."""
        idx = torch.remainder(start.long() + torch.arange(x.shape[1])[None, :], POSITIONS)
        return x + self.encoder.positions[idx]

    def attend(self, block: Block, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
               valid_past: torch.Tensor, valid: torch.Tensor):
        """One Whisper block over x (B, n, width), frames of whole blocks but maybe the last, after
        cached keys and values (B, heads, left, width / heads) of which the last `valid_past` (B,)
        hold frames; frames from `valid` (B,) on are padding. -> (output, the keys and values of
        the cache and the frames, (B, heads, left + n rounded up to a block, width / heads)).

        Each block's queries attend to a window of its own: the `left` keys before the block and
        the block's. Every call, whole utterance or one chunk, so reduces over windows of one
        size: chunked and whole compute the same numbers to the last bit (an int8 graph's
        rounding then cannot tell them apart), and training costs n x window, not n x n. The
        caches are kept split by head, as attention reads them: the graph moves only the new
        frames' keys into place, not the whole cache (its transposes and copies had cost more
        than the products)."""
        b, n, w = x.shape
        h, size = block.heads, self.left + self.block
        blocks = torch.div(n + self.block - 1, self.block, rounding_mode="floor")
        pad = blocks * self.block - n

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, n, width) -> (B, h, n rounded up, width / h)
            return nn.functional.pad(t, (0, 0, 0, pad)).reshape(b, -1, h, w // h).transpose(1, 2)

        q, k, v = (heads(t) for t in block.qkv(block.attn_ln(x)).split(w, dim=-1))
        keys, values = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
        idx = torch.arange(blocks)[:, None] * self.block + torch.arange(size)[None, :]  # (blocks, size)
        rel = idx - self.left  # key positions from this call's first frame
        held = (rel[None] >= -valid_past[:, None, None]) & (rel[None] < valid[:, None, None])
        mask = torch.where(held, 0.0, MASKED)[:, None, :, None, :]  # (B, 1, blocks, 1, size)
        queries = q.reshape(b, h, blocks, self.block, w // h)
        scores = queries @ keys[:, :, idx].transpose(-1, -2) / math.sqrt(w // h) + mask
        a = torch.softmax(scores, dim=-1) @ values[:, :, idx]  # (B, h, blocks, block, d)
        a = a.permute(0, 2, 3, 1, 4).reshape(b, blocks * self.block, w)[:, :n]
        x = x + block.attn_out(a)
        return x + block.mlp(block.mlp_ln(x)), keys, values

    # -- the streaming graph (what export writes) --------------------------------------------

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Zeros: silence before the stream, position 0, empty caches (masked until they fill)."""
        return (torch.zeros(batch, self.silence.shape[0], CONV_CONTEXT), torch.zeros(batch, 1),
                *(self._empty_cache(batch) for _ in range(2 * len(self.encoder.blocks))))

    def _empty_cache(self, batch: int) -> torch.Tensor:
        """One layer's keys (or values) of `left` frames, split by head."""
        heads, width = self.encoder.blocks[0].heads, self.encoder.width
        return torch.zeros(batch, heads, self.left, width // heads)

    def state_names(self) -> tuple[list[str], list[str], list[int]]:
        names = ["conv_cache", "position", *(f"{kv}_cache_{i}" for i in range(len(self.encoder.blocks))
                                              for kv in ("keys", "values"))]
        return names, [f"next_{n}" for n in names], [0] * len(names)

    def forward(self, audio_signal, length, conv_cache, position, *caches):
        """audio_signal (B, n_mels, T) Whisper-style log-mel, T a multiple of 4 (of block_frames but
        for a stream's last chunk) -> logprobs (B, T/4, V), their lengths, the next state."""
        x, next_conv = self.convolve(audio_signal, conv_cache)
        n = x.shape[1]
        x = self.position(x, position)
        valid_past = torch.clamp(position[:, 0], max=self.left)
        valid = torch.full_like(valid_past, n)
        next_caches = []
        for i, block in enumerate(self.encoder.blocks):
            x, keys, values = self.attend(block, x, caches[2 * i], caches[2 * i + 1], valid_past, valid)
            next_caches += [keys[:, :, n:n + self.left], values[:, :, n:n + self.left]]  # the last `left` frames
        moved = position + n
        # folded into [0, 3000): positions stay exact in float32, and a folded count still says the cache is full
        next_position = torch.where(moved >= 2 * POSITIONS, moved - POSITIONS, moved)
        logprobs = self.head_logprobs(self.encoder.ln_post(x))
        return logprobs, length // SUBSAMPLING, next_conv, next_position, *next_caches

    # -- training on cached outputs of the frozen part ---------------------------------------

    def _blocks(self, x: torch.Tensor, lengths: torch.Tensor, blocks) -> torch.Tensor:
        """Whole utterances (B, n, width) through `blocks`, masked as the stream runs them."""
        b = x.shape[0]
        empty = self._empty_cache(b).to(x)  # no past: held by none
        for block in blocks:
            x = self.attend(block, x, empty, empty, torch.zeros(b, dtype=torch.long), lengths)[0]
        return x

    @torch.no_grad()
    def encode_frozen(self, utterances: list[np.ndarray]) -> list[np.ndarray]:
        """Each utterance's (T, n_mels) features, followed by one block of silence (the service's
        quiet tail) -> as float16, the frozen part's output ((T + block) / 2, width): with every
        block trainable, the convolutions' alone (positions are added in training)."""
        self.encoder.eval()
        tail = self.silence[None, :, None].expand(1, -1, self.cfg.block_frames)
        out = []
        for feats in utterances:
            x = torch.cat([torch.from_numpy(feats).T[None], tail], dim=2)
            enc, _ = self.convolve(x, torch.zeros(1, x.shape[1], CONV_CONTEXT))  # silence before it
            if self.frozen_layers:
                enc = self._blocks(self.position(enc, torch.zeros(1, 1)), torch.tensor([enc.shape[1]]),
                                   self.encoder.blocks[:self.frozen_layers])
            out.append(enc[0].numpy().astype(np.float16))
        return out

    def train_forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, width, n) cached `encode_frozen` outputs, as collated -> log-probs, their lengths."""
        x = x.transpose(1, 2).float()
        if not self.frozen_layers:
            start = (torch.randint(0, POSITIONS, (x.shape[0], 1)) if self.cfg.position_jitter and self.training
                     else torch.zeros(x.shape[0], 1))
            x = self.position(x, start)
        x = self._blocks(x, lengths, self.encoder.blocks[self.frozen_layers:])
        return self.head_logprobs(self.encoder.ln_post(x)), lengths // 2

    def train_inputs_key(self) -> dict:
        """The cached outputs depend on the encoder, the mask and what is frozen (not the head)."""
        return {k: getattr(self.cfg, k) for k in ("encoder", "block_frames", "left_frames", "trainable_layers",
                                                  "whisper_floor")}

    def describe(self) -> str:
        c = self.cfg
        tuned = f", top {c.trainable_layers} fine-tuned" if c.trainable_layers else " (frozen)"
        return (f"Whisper {c.encoder} encoder{tuned}, streamed natively: blocks of {c.block_frames * 10} ms, "
                f"causal within {c.left_frames * 10} ms of cached keys/values, two frames stacked, "
                f"MLP head {c.head_hidden}x2, char CTC")

    def streaming(self) -> dict:
        """model.json's `streaming`: explicit state, which holds every layer's cache."""
        return {"scheme": "explicit_state",
                "cache": {"block_frames": self.cfg.block_frames, "left_frames": self.cfg.left_frames}}
