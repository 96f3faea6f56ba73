"""Second passes: at a final, the utterance's audio decoded again, with full context, by a model of
its own; a model directory declares one in model.json's `second_pass` (`kind` and its settings,
its files in `second_pass/`). One class per kind (`kind.SecondPass`)."""

from pathlib import Path

from engine.second_pass.kind import SecondPass, Utterance
from engine.second_pass.whisper import WhisperPass

KINDS: dict[str, type[SecondPass]] = {"whisper": WhisperPass}


def load(directory: Path, settings: dict, threads: int = 1) -> SecondPass:
    kind = settings.get("kind")
    if kind not in KINDS:
        raise ValueError(f"second_pass.kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return KINDS[kind](directory / "second_pass", settings, threads)


__all__ = ["KINDS", "SecondPass", "Utterance", "load"]
