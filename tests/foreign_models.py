"""Small randomly initialized CTC models in the field's formats, built here without any
download: a Hugging Face Wav2Vec2ForCTC directory, a NeMo-convention ONNX graph with a
sentencepiece BPE vocabulary, and an icefall/sherpa-onnx-convention one. Random weights
give random text; the structure, names, metadata and vocabularies are the real ones."""

import json
from pathlib import Path

import numpy as np
import torch

SENTENCES = ["what time is it in paris", "set a timer for ten minutes", "call my mother tomorrow morning",
             "turn the lights off in the kitchen", "play some music please", "how is the weather today",
             "remind me to buy milk", "my phone number is three two zero"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz'")


def _decisive(linear: torch.nn.Linear, seed: int) -> None:
    """Large output weights: random models then pick clear tokens instead of near ties."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 2.0)


def wav2vec2_dir(out: Path, layout: str = "processor") -> Path:
    """`layout`: "processor" as the installed transformers saves a processor (transformers 5:
    processor_config.json holds the feature extractor's settings), or "preprocessor" as
    transformers 4 did (preprocessor_config.json beside the tokenizer's files)."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )
    out.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *LETTERS])}
    (out / "vocab.json").write_text(json.dumps(vocab))
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, pad_token_id=0, architectures=["Wav2Vec2ForCTC"])
    model = Wav2Vec2ForCTC(cfg).eval()
    _decisive(model.lm_head, 0)
    model.save_pretrained(out)
    tokenizer = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=False)
    if layout == "processor":
        Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    else:
        tokenizer.save_pretrained(out)
        extractor.save_pretrained(out)
    return out


def sentencepiece_model(out: Path, vocab_size: int = 48) -> Path:
    import sentencepiece as spm
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.txt").write_text("\n".join(SENTENCES * 4) + "\n")
    spm.SentencePieceTrainer.train(input=str(out / "text.txt"), model_prefix=str(out / "bpe"), vocab_size=vocab_size,
                                   model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1)
    return out / "bpe.model"


class _TinyEncoder(torch.nn.Module):
    """Conv subsampling x4, one self-attention layer (full context, written out: torch's fused
    attention does not export), a CTC head."""

    def __init__(self, n_mels: int, vocab: int, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.sub = torch.nn.Sequential(torch.nn.Conv1d(n_mels, 48, 3, 2, 1), torch.nn.ReLU(),
                                       torch.nn.Conv1d(48, 48, 3, 2, 1), torch.nn.ReLU())
        self.qkv = torch.nn.Linear(48, 3 * 48)
        self.head = torch.nn.Linear(48, vocab)
        _decisive(self.head, 1)

    def forward(self, x, lengths):
        if self.channels_last:
            x = x.transpose(1, 2)
        h = self.sub(x).transpose(1, 2)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = h + torch.softmax(q @ k.transpose(1, 2) / 48 ** 0.5, dim=-1) @ v
        return torch.log_softmax(self.head(h), dim=-1), (lengths + 3) // 4


def _export(module: torch.nn.Module, path: Path, names: tuple[str, str, str, str], shape, meta: dict) -> None:
    import onnx
    torch.manual_seed(0)
    module.eval()
    signal, length, logprobs, lengths = names
    time_axis = 1 if module.channels_last else 2
    with torch.no_grad():
        torch.onnx.export(module, (torch.zeros(shape), torch.tensor([shape[time_axis]])), str(path), dynamo=False,
                          opset_version=17, input_names=[signal, length], output_names=[logprobs, lengths],
                          dynamic_axes={signal: {0: "N", time_axis: "T"}, length: {0: "N"},
                                        logprobs: {0: "N", 1: "T'"}, lengths: {0: "N"}})
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(path))


def nemo_bpe_onnx(out: Path) -> tuple[Path, Path]:
    """NeMo's convention as sherpa-onnx ships NeMo CTC models: the blank last, as <blk>."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_model(out / "spm")))
    tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())] + ["<blk>"]
    (out / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))
    torch.manual_seed(0)
    _export(_TinyEncoder(80, len(tokens), channels_last=False), out / "model.onnx",
            ("audio_signal", "length", "logprobs", "encoded_lengths"), (1, 80, 64),
            {"vocab_size": str(len(tokens)), "subsampling_factor": "4", "normalize_type": "per_feature",
             "model_type": "EncDecCTCModelBPE"})
    return out / "model.onnx", out / "spm" / "bpe.model"


def icefall_onnx(out: Path) -> tuple[Path, Path]:
    """icefall's convention (sherpa-onnx's offline zipformer CTC): x (N, T, 80), the blank first;
    no subsampling_factor in the metadata, so export measures it."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_model(out / "spm")))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    tokens = ["<blk>", "<sos/eos>", *pieces]
    (out / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))
    torch.manual_seed(1)
    _export(_TinyEncoder(80, len(tokens), channels_last=True), out / "model.onnx",
            ("x", "x_lens", "log_probs", "log_probs_len"), (1, 64, 80),
            {"vocab_size": str(len(tokens)), "model_type": "zipformer2_ctc"})
    return out / "model.onnx", out / "spm" / "bpe.model"


def greedy_ids(logprobs: np.ndarray, blank: int) -> list[int]:
    """CTC best path: repeats collapsed, blanks dropped."""
    ids = logprobs.argmax(axis=1).tolist()
    return [i for j, i in enumerate(ids) if i != blank and (j == 0 or ids[j - 1] != i)]
