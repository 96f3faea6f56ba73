"""The model directory: everything export wrote to `model.json` and `tokens.txt`, read and
checked once (`ModelSpec.load`): the front-end, the graph's input/output names and layout (`io`),
the vocabulary, the decoder's defaults, and the streaming scheme (`engine.model.schemes`).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.decoder.beam_search import BLANK
from engine.features import FeatureConfig
from engine.model.schemes import SCHEMES, ExplicitState, Scheme
from engine.second_pass import KINDS as SECOND_PASSES

MAX_BEAM_WIDTH = 256  # per request, and in model.json
MAX_LM_WEIGHT = 5.0  # per request, and in model.json
MAX_WORD_BONUS = 20.0


class ModelDirectoryError(ValueError):
    """A model directory that cannot be served, and why."""


def _inside(directory: Path, name, field: str) -> Path | None:
    """A file model.json names: a relative path inside the model directory (a directory served or
    reloaded must not make the server open other files), or None where it names none."""
    if not name:
        return None
    if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{directory / 'model.json'}: {field} must name a file inside the model directory "
                         f"(no absolute path, no '..'), not {name!r}")
    return _own(directory, name)


def _own(directory: Path, name: str) -> Path:
    """`directory / name`, refused where a symlink leads out of the directory (where to is not said)."""
    path = directory / name
    if not path.resolve().is_relative_to(directory.resolve()):
        raise ModelDirectoryError(f"{path}: a link to a file outside the model directory; copy the file in")
    return path


@dataclass(frozen=True)
class StateSpec:
    input: str
    output: str
    shape: tuple[int, ...]  # with 1 at batch_axis
    batch_axis: int


LAYOUTS = ("channels_first", "channels_last", "waveform")  # (B, width, T), (B, T, width), (B, samples)


@dataclass(frozen=True)
class ModelIO:
    """The graph's names: NeMo's by default, sherpa-onnx/icefall use x, x_lens, log_probs."""
    signal: str = "audio_signal"
    length: str | None = "length"  # None: the graph takes no lengths (a Hugging Face export)
    logprobs: str = "logprobs"
    layout: str = "channels_first"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"io.layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """batch (B, T, width) of front-end frames -> the graph's inputs."""
        if self.layout == "channels_first":
            x = batch.transpose(0, 2, 1)
        elif self.layout == "waveform":
            x = batch.reshape(len(batch), -1)
        else:
            x = batch
        x = np.ascontiguousarray(x, np.float32)
        feeds = {self.signal: x}
        if self.length:
            feeds[self.length] = np.full(len(batch), x.shape[-1] if self.layout == "channels_first" else x.shape[1],
                                         np.int64)
        return feeds


@dataclass(frozen=True)
class ModelSpec:
    directory: Path
    name: str
    version: str
    language_code: str
    features: FeatureConfig
    tokens: tuple[str, ...]
    subsampling_factor: int
    chunk_frames: int
    lookahead_frames: int
    states: tuple[StateSpec, ...]
    parameters: int
    lm: Path | None
    unigrams: Path | None
    lm_weight: float
    word_bonus: float
    beam_width: int
    tail_padding_ms: int
    blank_skip: float | None = None  # frames whose blank probability reaches this advance beams by the blank alone
    io: ModelIO = ModelIO()
    scheme: Scheme = ExplicitState()  # how the graph streams: `engine.model.schemes`
    second_pass: dict | None = None  # model.json's `second_pass` (its files in second_pass/): `engine.second_pass`

    @classmethod
    def load(cls, directory: Path, window_ms: "tuple[int | None, int | None, int | None]" = (None, None, None)
             ) -> "ModelSpec":
        """`window_ms`: a deployment's (left context, chunk, right context) in ms for a buffered
        model, each None to keep model.json's. Raises ModelDirectoryError, one line saying what is wrong."""
        directory = Path(directory)
        try:
            return cls._parse(directory, window_ms)
        except ModelDirectoryError:
            raise
        except KeyError as e:
            raise ModelDirectoryError(f"{directory / 'model.json'}: no {e} entry") from e
        except (ValueError, TypeError) as e:  # json's errors are ValueErrors
            raise ModelDirectoryError(f"{directory}: {e}" if str(directory) not in str(e) else str(e)) from e

    @classmethod
    def _parse(cls, directory: Path, window_ms) -> "ModelSpec":
        for required in ("model.onnx", "model.json", "tokens.txt"):
            if not _own(directory, required).is_file():
                raise ModelDirectoryError(f"{directory}: no {required}; is this a model directory written by "
                                        "`python -m export`?")
        try:
            meta = json.loads((directory / "model.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{directory / 'model.json'}: not JSON ({e})") from e
        tokens = read_tokens(directory / "tokens.txt")
        if tokens.count(BLANK) != 1:
            raise ValueError(f"{directory / 'tokens.txt'}: a CTC vocabulary has one blank token {BLANK!r}; this one "
                             f"has {tokens.count(BLANK)}")
        decoder = meta.get("decoder", {})
        beam_width = decoder.get("beam_width", 25)  # operators tune it here: refuse what a request could not ask
        if not isinstance(beam_width, int) or not 1 <= beam_width <= MAX_BEAM_WIDTH:
            raise ValueError(f"{directory / 'model.json'}: decoder.beam_width must be a whole number from 1 "
                             f"to {MAX_BEAM_WIDTH}, not {beam_width!r}")
        # A full-context encoder windowed inside the graph (`streaming.window`) keeps its blocks on one
        # grid only when every chunk but a stream's last is a multiple of the block.
        block = meta.get("streaming", {}).get("window", {}).get("block_frames", 1)
        if meta["chunk_frames"] % block:
            raise ValueError(f"{directory / 'model.json'}: chunk_frames {meta['chunk_frames']} is not a multiple "
                             f"of the streaming window's block_frames {block}")
        blank_skip = decoder.get("blank_skip")
        if blank_skip is not None and (isinstance(blank_skip, bool) or not isinstance(blank_skip, (int, float))
                                       or not 0 < blank_skip < 1):
            raise ValueError(f"{directory / 'model.json'}: decoder.blank_skip must be a probability between 0 "
                             f"and 1 (or null: off), not {blank_skip!r}")
        lm, unigrams = (_inside(directory, decoder.get(field), f"decoder.{field}") for field in ("lm", "unigrams"))
        weights = {"lm_weight": (decoder.get("lm_weight", 0.5), 0.0, MAX_LM_WEIGHT),
                   "word_bonus": (decoder.get("word_bonus", 1.0), -MAX_WORD_BONUS, MAX_WORD_BONUS)}
        for field, (value, low, high) in weights.items():  # what a request may ask; NaN fails the comparison
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{directory / 'model.json'}: decoder.{field} must be a number from {low:g} to "
                                 f"{high:g}, not {value!r}")
        features = FeatureConfig(**meta["features"])
        streaming = meta.get("streaming", {})
        name = streaming.get("scheme", "explicit_state")
        if name not in SCHEMES:
            raise ValueError(f"{directory / 'model.json'}: streaming.scheme must be one of {', '.join(SCHEMES)}, "
                             f"not {name!r}")
        scheme, chunk, lookahead = SCHEMES[name].parse(directory, meta, features, window_ms)
        second_pass = meta.get("second_pass")
        if second_pass is not None:
            if not isinstance(second_pass, dict) or second_pass.get("kind") not in SECOND_PASSES:
                raise ValueError(f"{directory / 'model.json'}: second_pass.kind must be one of "
                                 f"{', '.join(SECOND_PASSES)}")
            if not _own(directory, "second_pass").is_dir():
                raise ModelDirectoryError(f"{directory}: model.json declares a second pass, but there is no "
                                          "second_pass/ (python -m export.second_pass writes it)")
        return cls(
            directory=directory, name=meta["name"], version=meta["version"],
            language_code=meta.get("language_code", "en"),
            features=features, tokens=tokens,
            subsampling_factor=meta["subsampling_factor"], chunk_frames=chunk, lookahead_frames=lookahead,
            states=tuple(StateSpec(s["input"], s["output"], tuple(s["shape"]), s["batch_axis"])
                         for s in meta.get("states", ())),
            parameters=meta.get("parameters", 0), lm=lm, unigrams=unigrams,
            lm_weight=weights["lm_weight"][0], word_bonus=weights["word_bonus"][0],
            beam_width=beam_width, blank_skip=blank_skip, io=ModelIO(**meta.get("io", {})), scheme=scheme,
            second_pass=second_pass,
            # the quiet tail must cover the right context, or a stream's last words would never be output
            tail_padding_ms=max(meta.get("tail_padding_ms", 320), round(lookahead * 1000 * features.hop_length
                                                                         / features.sample_rate)),
        )

    @property
    def streaming_description(self) -> str:
        return self.scheme.description(self)

    @property
    def delay_frames(self) -> int:
        """Output frames by which the outputs lag the input: the model's look-ahead."""
        return self.lookahead_frames // self.subsampling_factor

    @property
    def frame_seconds(self) -> float:
        """Duration of one output frame (after subsampling)."""
        return self.features.hop_length * self.subsampling_factor / self.features.sample_rate


def read_tokens(path: Path) -> tuple[str, ...]:
    """tokens.txt lines are `symbol id`, ids 0..V-1."""
    by_id = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        symbol, _, i = line.rpartition(" ")
        if not line.strip():
            continue
        if not symbol or not i.isdigit():  # said without quoting it: the file may not be what it claims
            raise ValueError(f"{path}: line {number} is not `symbol id`")
        by_id[int(i)] = symbol
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"{path}: token ids are not 0..{len(by_id) - 1}")
    return tuple(by_id[i] for i in range(len(by_id)))
