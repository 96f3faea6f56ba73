"""Whether a model's graph gives the same outputs on two kinds of CPU (int8 kernels differ between
them: "Precision and CPUs" in the bundled model's card), for a run on another machine.

    python -m scripts.cpu_kinds features --model DIR --manifest M [--limit 20] --out F.npz
    python -m scripts.cpu_kinds run --model DIR --features F.npz --out O.npz     # on each machine
    python -m scripts.cpu_kinds compare HERE.npz THERE.npz

`features` writes each clip's features as the model's front-end streams them (rounded to float16,
so that both machines read the same numbers: the check is of the graph, not of numpy's FFT);
`run` streams them through the model chunk by chunk with its carried state, as the service does,
and keeps the log-probabilities with the CPU's name and ONNX Runtime's version; `compare` prints
the largest difference in log-probability and how many greedy texts differ.
"""

import argparse
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.decoder.ctc import GREEDY, CtcDecoder
from engine.features import frontend, logmel_utterance, pad_to_multiple
from engine.model.directory import ModelSpec
from engine.model.session import ModelSession


def features(model: Path, manifest: Path, limit: int, out: Path) -> None:
    from engine.manifest import read_audio, read_manifest, spread  # here only: the other machine reads no audio
    spec = ModelSpec.load(model)
    logmel = frontend(spec.features)
    clips = {}
    for i, row in enumerate(spread(read_manifest(manifest), limit)):
        audio = read_audio(Path(row["audio"]), spec.features.sample_rate)
        clips[f"{i:03d}_{Path(row['audio']).stem}"] = logmel_utterance(logmel, audio).astype(np.float16)
    np.savez_compressed(out, **clips)
    print(f"{out}: {len(clips)} clips of {manifest}")


def cpu_name() -> str:
    """The CPU's model name and whether it has VNNI (which int8 kernel ONNX Runtime takes)."""
    info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    vnni = {"avx512_vnni", "avx_vnni"} & set(info.get("flags", "").split())
    return f"{info.get('model name', platform.processor())} (VNNI: {'yes' if vnni else 'no'})"


def run(model: Path, feats: Path, out: Path) -> None:
    spec = ModelSpec.load(model)
    session = ModelSession(spec, "cpu")
    logmel = frontend(spec.features)
    kept = {}
    for name, frames in np.load(feats).items():
        frames = pad_to_multiple(logmel, frames.astype(np.float32), spec.chunk_frames)
        state, outputs = session.initial_state(), []
        for i in range(0, len(frames), spec.chunk_frames):
            logprobs, state = session.step(frames[i:i + spec.chunk_frames], state)
            outputs.append(logprobs)
        kept[name] = np.concatenate(outputs)
    np.savez_compressed(out, cpu=cpu_name(), onnxruntime=ort.__version__, **kept)
    print(f"{out}: {len(kept)} clips on {cpu_name()}, onnxruntime {ort.__version__}")


def compare(here: Path, there: Path, model: Path) -> None:
    decoder = CtcDecoder(ModelSpec.load(model))

    def greedy(logprobs: np.ndarray) -> str:
        return decoder.decode(logprobs, GREEDY)[0].text
    a, b = np.load(here), np.load(there)
    clips = [k for k in a.files if k not in ("cpu", "onnxruntime")]
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in clips)
    differ = [k for k in clips if greedy(a[k]) != greedy(b[k])]
    print(f"{model}: {a['cpu']} (onnxruntime {a['onnxruntime']}) against {b['cpu']} (onnxruntime "
          f"{b['onnxruntime']}): {len(clips)} clips, largest log-prob difference {worst:.2e}, "
          f"greedy texts that differ: {len(differ)}" + (f" ({', '.join(differ)})" if differ else ""))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.cpu_kinds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features")
    f.add_argument("--model", type=Path, required=True)
    f.add_argument("--manifest", type=Path, required=True)
    f.add_argument("--limit", type=int, default=20)
    f.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--features", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("here", type=Path)
    c.add_argument("there", type=Path)
    c.add_argument("--model", type=Path, required=True, help="the model both ran (its tokens)")
    a = p.parse_args()
    if a.command == "features":
        features(a.model, a.manifest, a.limit, a.out)
    elif a.command == "run":
        run(a.model, a.features, a.out)
    else:
        compare(a.here, a.there, a.model)


if __name__ == "__main__":
    main()
