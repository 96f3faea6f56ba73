"""Train a streaming CTC model with CTC loss, watching held-out CER/WER.

    python -m models.train --config models/configs/default.toml --out runs/default [--resume]

Writes `last.pt` (resumable; at every validation and every `save_every`
steps), `best.pt` (best WER on the `best_on` validation set: beam + LM when
the config names an `lm` directory, decoded by the service's own decoder at
that directory's decoder.json weights and beam width, or `valid_beam_width`;
else greedy) and
`metrics.jsonl` (one line per validation) to --out. `init = "CKPT"` in the
config starts from another run's weights (fine-tuning) instead of at random;
`bf16 = true` runs the forward pass under bfloat16 autocast (for CPUs with
AVX512-BF16 or AMX).

`[model] kind` picks the family (models/architectures.py): `gru` (default) trains the
whole network on log-mel features; `whisper_ctc` keeps the pretrained encoder frozen,
encodes every utterance once (cached beside the features, so --resume skips it too) and
trains the head on the encodings. A train or valid entry's `limit = N` takes N of its rows,
evenly spaced.
"""

import argparse
import functools
import json
import math
import random
import time
import tomllib
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
import soxr
import torch
from parselmouth import PraatWarning, Sound
from parselmouth.praat import call
from tqdm import tqdm

from engine.decoder.ctc import CtcDecoder, DecodeOptions, DecoderInputs
from engine.features import FeatureConfig, FrontEnd, frontend, logmel_utterance, pad_to_multiple
from engine.manifest import read_manifest, spread
from models import architectures
from models.model import TOKENS, encode_text, init_from, num_parameters

SR = 16000


@dataclass(frozen=True)
class Augment:
    """Waveform and feature perturbations, drawn once per utterance copy."""
    # Voice conversion (Praat's "Change gender": PSOLA pitch change plus resampling, so formants
    # and pitch move independently): a new speaker from every source voice.
    voice_conversion_probability: float = 0.0
    formant_shift: tuple[float, float] = (0.85, 1.2)
    pitch_median_hz: tuple[float, float] = (80.0, 260.0)
    pitch_range_factor: tuple[float, float] = (0.5, 1.0)
    gain_db: tuple[float, float] = (-12.0, 6.0)
    noise_probability: float = 0.5
    snr_db: tuple[float, float] = (10.0, 40.0)
    reverb_probability: float = 0.0
    rt60_s: tuple[float, float] = (0.15, 0.7)
    telephone_probability: float = 0.0
    speed_probability: float = 0.0
    speed: tuple[float, float] = (0.9, 1.1)
    vtlp_probability: float = 0.0
    vtlp_warp: tuple[float, float] = (0.9, 1.1)
    freq_masks: int = 2
    freq_mask_width: int = 12
    time_masks: int = 2
    time_mask_fraction: float = 0.05

    def __post_init__(self) -> None:
        # Widening the pitch range can push pitch points towards 0 Hz, where Praat's PSOLA never
        # returns (seen here: a 3 s clip, factor 1.38, > 10 minutes).
        if not 0 < self.pitch_range_factor[0] <= self.pitch_range_factor[1] <= 1.0:
            raise ValueError("pitch_range_factor must lie in (0, 1]")


def _colored_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White, pink or brown noise of unit power."""
    exponent = rng.choice([0.0, 0.5, 1.0])
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.maximum(np.arange(len(spectrum)), 1) ** exponent
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _reverberate(audio: np.ndarray, rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Convolution with a synthetic room response: direct path plus exponentially decaying noise."""
    t = np.arange(int(rt60 * SR)) / SR
    rir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60) * 0.3
    rir[0] = 1.0
    n = len(audio) + len(rir) - 1
    wet = np.fft.irfft(np.fft.rfft(audio, n) * np.fft.rfft(rir, n), n)[: len(audio)]
    return wet * np.sqrt(np.mean(audio**2) / (np.mean(wet**2) + 1e-12))


def _convert_voice(audio: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    sound = Sound(audio.astype(np.float64), SR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PraatWarning)  # "no voiced segments": handled below
        out = call(sound, "Change gender", 75, 600, rng.uniform(*aug.formant_shift),
                   rng.uniform(*aug.pitch_median_hz), rng.uniform(*aug.pitch_range_factor), 1.0)
    converted = out.values[0].astype(np.float32)
    # Unvoiced input (no pitch found) comes back silent or non-finite: keep the original then.
    return converted if np.isfinite(converted).all() and np.abs(converted).max() > 1e-4 else audio


def augment_audio(audio: np.ndarray, aug: Augment, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Perturbed waveform and the VTLP warp to compute its features with."""
    if rng.random() < aug.voice_conversion_probability:
        audio = _convert_voice(audio, aug, rng)
    if rng.random() < aug.speed_probability:
        audio = soxr.resample(audio, SR, SR / rng.uniform(*aug.speed))
    if rng.random() < aug.reverb_probability:
        audio = _reverberate(audio, rng, rng.uniform(*aug.rt60_s))
    if rng.random() < aug.telephone_probability:
        audio = soxr.resample(soxr.resample(audio, SR, 8000), 8000, SR)[: len(audio)]
    audio = audio * 10 ** (rng.uniform(*aug.gain_db) / 20)
    if rng.random() < aug.noise_probability:
        power = float(np.mean(audio**2)) + 1e-10
        snr = rng.uniform(*aug.snr_db)
        audio = audio + _colored_noise(rng, len(audio)) * math.sqrt(power / 10 ** (snr / 10))
    warp = round(rng.uniform(*aug.vtlp_warp), 2) if rng.random() < aug.vtlp_probability else 1.0
    return audio, warp


@functools.lru_cache(maxsize=64)
def _logmel(features: FeatureConfig, warp: float) -> FrontEnd:
    return frontend(features, warp)


def _features(args: tuple[dict, Augment | None, int, FeatureConfig, int]) -> np.ndarray:
    row, aug, seed, features, multiple = args
    audio, rate = sf.read(row["audio"], dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SR:
        audio = soxr.resample(audio, rate, SR)
    warp = 1.0
    if aug is not None:
        audio, warp = augment_audio(audio, aug, np.random.default_rng(seed))
    plain = _logmel(features, 1.0)
    return pad_to_multiple(plain, logmel_utterance(_logmel(features, warp), audio.astype(np.float32)), multiple)



def read_rows(path: str, sources: list[str] | None = None, limit: int | None = None) -> list[dict]:
    """A manifest's rows; only those of the given `sources` (the `source` field) when named,
    and `limit` of them, evenly spaced, when given."""
    rows = spread([r for r in read_manifest(path) if sources is None or r["source"] in sources], limit)
    if not rows:
        raise ValueError(f"{path}: no rows" + (f" with source in {sources}" if sources else ""))
    return rows


def load_set(rows: list[dict], desc: str, aug: Augment | None, seed: int, pool, model,
             copies: int = 1) -> list[tuple[np.ndarray, str]]:
    """The model's training inputs for manifest rows (log-mel features, or the frozen encoder's
    outputs); with augmentation, `copies` differently perturbed copies of each."""
    rows = rows * copies
    jobs = [(r, aug, seed * 1_000_003 + i, model.cfg.features, model.subsampling) for i, r in enumerate(rows)]
    feats = list(tqdm(pool.map(_features, jobs, chunksize=32), total=len(rows), desc=f"features {desc}"))
    feats = [x for i in tqdm(range(0, len(feats), 128), desc=f"inputs {desc}")
             for x in model.train_inputs(feats[i:i + 128])]  # in parts: an encoder may run over them
    return [(f, r["text"]) for f, r in zip(feats, rows)]


def cached_features(path: Path, key: dict, compute) -> list[tuple[np.ndarray, str]]:
    """`compute()`'s features, read back from `path` when it was written for the same `key` (a
    resumed run then skips the minutes of feature extraction), else computed and written there."""
    stamp = json.dumps(key, sort_keys=True)
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) == stamp:
                bounds = np.cumsum(saved["lengths"])
                frames = saved["frames"]
                print(f"features read from {path}")
                return list(zip(np.split(frames, bounds[:-1]), saved["texts"].tolist()))
        print(f"{path} was written for other settings: extracting again")
    data = compute()
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as out:  # written whole, then renamed: an interrupted save leaves no cache
        np.savez(out, key=np.array(stamp), frames=np.concatenate([f for f, _ in data]),
                 lengths=np.array([len(f) for f, _ in data]), texts=np.array([t for _, t in data]))
    partial.replace(path)
    return data


def batches(data, batch_frames: int, rng: random.Random) -> list[list[int]]:
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    out, cur, longest = [], [], 0
    for i in order:
        longest = max(longest, len(data[i][0]))
        if cur and longest * (len(cur) + 1) > batch_frames:
            out.append(cur)
            cur, longest = [], len(data[i][0])
        cur.append(i)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def collate(data, idx: list[int], padding: tuple[np.ndarray, int]):
    """A padded batch; `padding` is the model's pad frame and how many of them follow every
    utterance (`train_padding`)."""
    pad, tail = padding
    feats = [data[i][0] for i in idx]
    longest = max(len(f) for f in feats) + tail
    x = np.tile(pad, (len(idx), longest, 1))
    for b, f in enumerate(feats):
        x[b, : len(f)] = f
    targets = [torch.tensor(encode_text(data[i][1])) for i in idx]
    return (torch.from_numpy(x).transpose(1, 2).contiguous(), torch.tensor([len(f) + tail for f in feats]),
            torch.cat(targets), torch.tensor([len(t) for t in targets]))


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, aug: Augment, gen: torch.Generator, fill: float):
    x = x.clone()
    for b in range(x.shape[0]):
        for _ in range(aug.freq_masks):
            w = int(torch.randint(0, aug.freq_mask_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, x.shape[1] - w + 1, (1,), generator=gen))
            x[b, f0 : f0 + w, :] = fill
        t_max = max(1, int(aug.time_mask_fraction * int(lengths[b])))
        for _ in range(aug.time_masks):
            w = int(torch.randint(0, t_max + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, int(lengths[b]) - w), (1,), generator=gen))
            x[b, :, t0 : t0 + w] = fill
    return x


def train_step(model, opt, ctc, batch, bf16: bool) -> float:
    """One optimizer step on a collated batch; returns the CTC loss. With bf16 the forward pass
    runs under bfloat16 autocast: 1.4-1.5x the steps per second on this project's AMD EPYC
    (AVX512-BF16; `models.benchmark --train-config`), maybe nothing on a CPU without native
    bfloat16. Weights, optimizer state, log-probs and loss stay float32."""
    x, lengths, targets, target_lengths = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logprobs, out_lengths = model.train_forward(x, lengths)
    loss = ctc(logprobs.transpose(0, 1), targets, out_lengths, target_lengths)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def greedy_text(logprobs: np.ndarray) -> str:
    ids = logprobs.argmax(-1)
    keep = [int(i) for j, i in enumerate(ids) if i != 0 and (j == 0 or i != ids[j - 1])]
    return "".join(" " if TOKENS[i] == "▁" else TOKENS[i] for i in keep).strip()


def lm_decoder(lm_dir: Path, frame_seconds: float, beam_width: int | None) -> tuple[CtcDecoder, DecodeOptions]:
    """The service's decoder over a directory made by `python -m models.lm` (lm.bin, unigrams.txt,
    decoder.json with lm_weight, word_bonus and maybe beam_width), at the weights it serves with:
    best.pt is chosen by what the service will run."""
    weights = json.loads((lm_dir / "decoder.json").read_text())
    decoder = CtcDecoder(DecoderInputs(tuple(TOKENS), lm_dir / "lm.bin", lm_dir / "unigrams.txt", frame_seconds))
    width = beam_width or weights.get("beam_width", 64)
    return decoder, DecodeOptions(beam_width=width, lm_weight=weights["lm_weight"], word_bonus=weights["word_bonus"])


@torch.no_grad()
def evaluate(model, data, batch_frames: int, decoder: tuple[CtcDecoder, DecodeOptions] | None = None) -> dict:
    """Greedy WER/CER, and beam + LM WER/CER when a decoder is given."""
    model.eval()
    refs, hyps, lm_hyps = [], [], []
    for idx in batches(data, batch_frames, random.Random(0)):
        x, lengths, _, _ = collate(data, idx, model.train_padding())
        logprobs, out_lengths = model.train_forward(x, lengths)
        for b, i in enumerate(idx):
            frames = logprobs[b, : out_lengths[b]].numpy()
            hyps.append(greedy_text(frames))
            if decoder is not None:
                lm_hyps.append(decoder[0].decode(frames, decoder[1])[0].text)
            refs.append(data[i][1])
    model.train()
    scores = {"wer": jiwer.wer(refs, hyps), "cer": jiwer.cer(refs, hyps), "n": len(refs),
              "example": {"ref": refs[0], "hyp": hyps[0]}}
    if decoder is not None:
        scores.update(lm_wer=jiwer.wer(refs, lm_hyps), lm_cer=jiwer.cer(refs, lm_hyps))
    return scores


def load_config(path: Path) -> dict:
    """A training config; `base = "other.toml"` (beside it) supplies every setting it does not
    name, table by table, so a later stage states only what it changes."""
    cfg = tomllib.loads(path.read_text())
    if "base" not in cfg:
        return cfg
    base = load_config(path.parent / cfg.pop("base"))
    for table in ("augment", "model"):
        cfg[table] = {**base.get(table, {}), **cfg.get(table, {})}
    return {**base, **cfg}


def typed_settings(cfg: dict) -> tuple[Augment, object]:
    """A config's [augment] and [model] tables as their validated dataclasses (TOML lists -> tuples)."""
    aug = Augment(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("augment", {}).items()})
    return aug, architectures.model_config(cfg.get("model", {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    a = p.parse_args()
    cfg = load_config(a.config)
    aug, model_cfg = typed_settings(cfg)
    bf16 = cfg.get("bf16", False)
    if not isinstance(bf16, bool):
        p.error(f"{a.config}: bf16 must be true or false, not {bf16!r}")
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.get("threads", 2))
    seed = cfg.get("seed", 0)
    random.seed(seed)
    torch.manual_seed(seed)

    # A train entry is a manifest path or {path = ..., copies = N, sources = [...]}: weight a
    # manifest, or some of its sources, up. Every manifest, and the checkpoint to start from,
    # is read (and checked) before the minutes of feature extraction start.
    entries = [t if isinstance(t, dict) else {"path": t} for t in cfg["train"]]
    train_rows = [(e["path"], read_rows(e["path"], e.get("sources"), e.get("limit")), e.get("copies", 1))
                  for e in entries]
    # A valid entry is a manifest path or {path = ..., limit = N}.
    valid_entries = {n: v if isinstance(v, dict) else {"path": v} for n, v in cfg["valid"].items()}
    valid_rows = {name: (e["path"], read_rows(e["path"], limit=e.get("limit"))) for name, e in valid_entries.items()}
    model = architectures.build(model_cfg)
    if cfg.get("init"):  # fine-tune: its weights and feature normalization
        new = init_from(model, cfg["init"])
        print(f"initialized from {cfg['init']}" + (f" ({', '.join(new)} new, starting at zero)" if new else ""))
    # What the training features depend on; a manifest rebuilt since invalidates them.
    stats = [Path(e["path"]).stat() for e in entries]
    inputs = {"features": asdict(model_cfg.features), "kind": model_cfg.kind, **model.train_inputs_key()}
    key = {"train": [{**e, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns} for e, st in zip(entries, stats)],
           "augment": asdict(aug), "seed": seed, **inputs}
    with ProcessPoolExecutor(cfg.get("threads", 2)) as pool:
        train = cached_features(a.out / "train_features.npz", key, lambda: [
            item for i, (path, rows, copies) in enumerate(train_rows)
            for item in load_set(rows, path, aug, seed + 7919 * i, pool, model, copies)])
        valid = {}
        for name, (path, rows) in valid_rows.items():
            st = Path(path).stat()
            valid_key = {"valid": {**valid_entries[name], "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
                         "seed": seed, **inputs}
            valid[name] = cached_features(a.out / f"valid_{name}_features.npz", valid_key,
                                          lambda rows=rows, path=path: load_set(rows, path, None, seed, pool, model))
    hours = sum(r["duration"] * copies for _, rows, copies in train_rows for r in rows) / 3600
    print(f"train: {len(train)} utterances, {hours:.2f} h")

    if not cfg.get("init"):
        model.fit_normalization([f for f, _ in train[:2000]])
    frame_seconds = model.subsampling * model_cfg.features.hop_length / model_cfg.features.sample_rate
    decoder = lm_decoder(Path(cfg["lm"]), frame_seconds, cfg.get("valid_beam_width")) if cfg.get("lm") else None
    best_key = "lm_wer" if decoder else "wer"
    print(f"model: {num_parameters(model) / 1e6:.2f} M parameters")
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable: {sum(p.numel() for p in trainable) / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    total = cfg["max_steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total,
                                                pct_start=cfg.get("warmup_fraction", 0.1))
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    if bf16:
        print("forward pass in bfloat16 (autocast)")
    step, best, elapsed = 0, math.inf, 0.0
    if a.resume and (a.out / "last.pt").exists():
        state = torch.load(a.out / "last.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best, elapsed = state["step"], state["best"], state["elapsed"]
        print(f"resumed at step {step}")
    gen = torch.Generator().manual_seed(seed + step)
    rng = random.Random(seed + step)
    padding = model.train_padding()

    def checkpoint(name: str, resumable: bool) -> None:
        """best.pt is weights and settings only (what export needs); last.pt can resume."""
        info = {"step": step, "best": best, "elapsed": elapsed, "train_hours": hours, "config": cfg}
        if resumable:
            info.update(optimizer=opt.state_dict(), scheduler=sched.state_dict())
        architectures.save(a.out / name, model, info)

    started = time.monotonic() - elapsed
    bar = tqdm(total=total, initial=step, desc="train")
    model.train()
    done = step >= total
    while not done:
        for idx in batches(train, cfg["batch_frames"], rng):
            x, lengths, targets, target_lengths = collate(train, idx, padding)
            x = spec_augment(x, lengths, aug, gen, float(padding[0][0]))
            loss = train_step(model, opt, ctc, (x, lengths, targets, target_lengths), bf16)
            sched.step()
            step += 1
            elapsed = time.monotonic() - started
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            out_of_time = elapsed > 60 * cfg["max_minutes"]
            done = step >= total or out_of_time
            if step % cfg["valid_every"] == 0 or done:
                scores = {name: evaluate(model, data, cfg["batch_frames"], decoder) for name, data in valid.items()}
                row = {"step": step, "minutes": round(elapsed / 60, 2), "loss": loss,
                       **{f"{n}/{k}": v for n, s in scores.items() for k, v in s.items() if k != "example"}}
                with open(a.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                for n, s in scores.items():
                    bar.write(f"  {n}: ref={s['example']['ref']!r} hyp={s['example']['hyp']!r}")
                if scores[cfg["best_on"]][best_key] < best:
                    best = scores[cfg["best_on"]][best_key]
                    checkpoint("best.pt", resumable=False)
                checkpoint("last.pt", resumable=True)
            elif step % cfg.get("save_every", cfg["valid_every"]) == 0:  # --resume loses less
                checkpoint("last.pt", resumable=True)
                bar.write(f"saved last.pt at step {step}")
            if done:
                break
    bar.close()
    print(f"done: step {step}, {elapsed / 60:.1f} min, best {cfg['best_on']} {best_key} {best:.4f}")


if __name__ == "__main__":
    main()
