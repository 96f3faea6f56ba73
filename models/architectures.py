"""The model families `models.train` trains and `export` writes, chosen by `kind` in a
config's [model] table (and stored in every checkpoint): `gru` (models/model.py, from
scratch), `whisper_ctc` (models/encoder_ctc.py, a pretrained encoder with our head, streamed in
windows) and `whisper_ctc_cached` (models/cached_encoder_ctc.py, the same encoder streamed
natively with cached keys and values). All offer what training and export use: cfg.features,
cfg.lookahead_frames, subsampling, chunk_multiple, default_chunk_frames, initial_state, state_names,
describe, streaming, parity_features, forward (the streaming graph), fit_normalization, train_inputs_key,
train_inputs, train_padding, train_forward, checkpoint (what a checkpoint holds) and
from_checkpoint. A new family is one module and one entry in FAMILIES."""

from pathlib import Path

import torch

from models import cached_encoder_ctc, encoder_ctc, model

FAMILIES = {
    "gru": (model.ModelConfig, model.StreamingCTC),
    "whisper_ctc": (encoder_ctc.EncoderCTCConfig, encoder_ctc.EncoderCTC),
    "whisper_ctc_cached": (cached_encoder_ctc.CachedEncoderCTCConfig, cached_encoder_ctc.CachedEncoderCTC),
}


def model_config(table: dict):
    kind = table.get("kind", "gru")
    if kind not in FAMILIES:
        raise ValueError(f"[model] kind must be one of {', '.join(FAMILIES)}, not {kind!r}")
    return FAMILIES[kind][0](**table)


def build(cfg):
    return FAMILIES[cfg.kind][1](cfg)


def save(path: Path, net, extra: dict) -> None:
    torch.save(net.checkpoint(extra), path)


def load(path: Path):
    """(model in eval mode, the checkpoint's dict) of any family."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    kind = ckpt["model_config"].get("kind", "gru")
    if kind not in FAMILIES:
        raise ValueError(f"{path}: a checkpoint of family {kind!r}; this version knows {', '.join(FAMILIES)}")
    return FAMILIES[kind][1].from_checkpoint(ckpt), ckpt
