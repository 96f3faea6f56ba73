"""Average the weights of checkpoints from one training run: a cheap ensemble that can keep
the strengths of each (the bundled model 0.7.0 is stage 6's best.pt and last.pt averaged; the
model card compares it with both).

    python -m models.average runs/default_s6/best.pt runs/default_s6/last.pt --out runs/default_s6/average.pt

The result keeps the first checkpoint's settings and tokens (not its optimizer state: it
does not resume) and records where it came from; `python -m export --ckpt` takes it as usual.
"""

import argparse
from pathlib import Path

import torch

_RESUME_ONLY = ("optimizer", "scheduler")


def average(paths: list[Path]) -> dict:
    ckpts = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    first = ckpts[0]
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if ckpt["model_config"] != first["model_config"] or ckpt["tokens"] != first["tokens"]:
            raise ValueError(f"{path} is not the same model as {paths[0]}: only checkpoints of one "
                             f"architecture and vocabulary can be averaged")
    state = {name: torch.stack([c["state_dict"][name] for c in ckpts]).mean(0)
             if tensor.is_floating_point() else tensor for name, tensor in first["state_dict"].items()}
    kept = {k: v for k, v in first.items() if k not in _RESUME_ONLY}
    return {**kept, "state_dict": state, "step": max(c.get("step", 0) for c in ckpts),
            "averaged_from": [{"path": str(p), "step": c.get("step")} for p, c in zip(paths, ckpts)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpts", nargs="+", type=Path, help="checkpoints written by python -m models.train")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if len(a.ckpts) < 2:
        p.error("give at least two checkpoints")
    try:
        averaged = average(a.ckpts)
    except ValueError as e:
        p.error(str(e))
    torch.save(averaged, a.out)
    steps = ", ".join(str(s["step"]) for s in averaged["averaged_from"])
    print(f"{a.out}: mean of {len(a.ckpts)} checkpoints (steps {steps})")


if __name__ == "__main__":
    main()
