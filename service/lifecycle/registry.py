"""The served models' lifecycle: replacing a model while it serves (loading is `loading.py`'s).

A reload loads the new directory beside the serving model, off the event loop, and self-checks
it (ONNX Runtime and the LM load, a warm-up at every batch size, then the directory's
`canaries/` decoded within --self-check-max-wer). Only then do new calls go to it; calls in
flight finish on the model they started with, which is freed when the last one ends. A staged
reload makes it a candidate instead (`service.lifecycle.promotion`): it decodes again each canary the
serving model answers until it is promoted or dropped. One reload runs at a time.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from ctc_asr.v1 import asr_pb2
from engine import manifest
from engine.model.directory import ModelDirectoryError
from service.config import ServerConfig
from service.errors import ServiceError, Status
from service.lifecycle.loading import announce, first_line, load_model, release_memory
from service.lifecycle.promotion import EXPIRED, PROMOTED, REPLACED, STOPPED, Candidate, Decision, Evaluation
from service.lifecycle.served import ServedModel
from service.metrics import Metrics
from service.session import canary
from service.session.speech import Speech
from service.session.stream import float32_config, replay, seconds_of

log = logging.getLogger(__name__)
RELOADED, STAGED, FAILED = "reloaded", "staged", "failed"


class SelfCheckFailed(Exception):
    pass


def _canaries(directory: Path) -> list[tuple[Path, str, str]]:
    """canaries/manifest.jsonl's clips (audio, reference, set); SelfCheckFailed naming the line of one
    that is not a canary, or whose audio is not a file inside canaries/ (no contents quoted)."""
    try:
        return manifest.checked_clips(directory / "canaries" / "manifest.jsonl")
    except manifest.ManifestError as e:
        raise SelfCheckFailed(str(e)) from None


@dataclass(frozen=True)
class ReloadOutcome:
    result: str  # reloaded, or a staged candidate's decision
    message: str
    serving: ServedModel  # the model serving under the name afterwards
    sets: tuple[asr_pb2.CanaryComparison, ...] = ()
    self_check_wer: float = -1.0


class Reloader:
    def __init__(self, speech: Speech, cfg: ServerConfig, metrics: Metrics) -> None:
        self.speech, self.cfg, self.metrics = speech, cfg, metrics
        self._lock = asyncio.Lock()
        self._candidates: dict[str, Candidate] = {}
        self._retiring: set[ServedModel] = set()
        self._tasks: set[asyncio.Task] = set()
        self._shown: dict[str, Evaluation] = {}  # the evaluation whose numbers the metrics show, per model

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def self_check(self, served: ServedModel) -> float:
        """The WER of the directory's canaries (-1 when it has none: generated audio is decoded
        instead, so that a model that cannot decode is never served); SelfCheckFailed above the
        bound, or naming the canary file (relative to the directory) it cannot read."""
        endpoint = replace(self.cfg.endpoint, enabled=False)  # each clip one utterance, as Recognize does

        async def transcribe(samples: np.ndarray, rate: int) -> str:
            sc = float32_config(asr_pb2.RecognitionConfig(), rate)
            return await self.speech.transcribe_quietly(served, sc, seconds_of(samples, rate), endpoint)

        manifest = served.directory / "canaries" / "manifest.jsonl"
        if not manifest.is_file():
            rate = served.spec.features.sample_rate
            noise = np.random.default_rng(0).normal(0, 0.05, 2 * rate).astype(np.float32)
            try:
                await transcribe(noise, rate)
            except Exception as e:
                raise SelfCheckFailed(f"it cannot decode generated audio ({first_line(e)})") from e
            return -1.0
        word_errors = words = 0
        for number, (audio, text, set_name) in enumerate(await asyncio.to_thread(_canaries, served.directory), 1):
            try:
                samples, clip_rate = await asyncio.to_thread(sf.read, audio, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, OSError, RuntimeError):
                raise SelfCheckFailed(f"canaries/manifest.jsonl line {number}: canaries/"
                                      f"{audio.relative_to(served.directory / 'canaries')} cannot be read as "
                                      "audio") from None
            s = canary.score(text, await transcribe(samples.mean(axis=1), clip_rate), set_name)
            word_errors, words = word_errors + s.word_errors, words + s.reference_words
        wer = word_errors / max(words, 1)
        if wer > self.cfg.self_check_max_wer:
            raise SelfCheckFailed(f"its canaries/ decode at WER {wer:.3f}, above --self-check-max-wer "
                                  f"{self.cfg.self_check_max_wer:g}")
        return wer

    async def reload(self, name: str, directory: str, stage: bool) -> ReloadOutcome:
        """Reload (or stage) model `name` ("" = the default) from `directory` ("" = its own)."""
        async with self._lock:
            serving = self.speech.models.get(name)
            path = Path(directory) if directory else serving.directory
            new = None
            started = time.monotonic()
            try:
                new = await asyncio.to_thread(load_model, serving.name, path, self.cfg, self.metrics)
                new.batcher.start()
                wer = await self.self_check(new)
            except BaseException as e:  # failed, or cancelled (the caller's deadline): what it loaded goes
                if new is not None:
                    await self._free(new)
                if not isinstance(e, (ModelDirectoryError, SelfCheckFailed)):
                    raise
                self.metrics.model_reloads.labels(serving.name, FAILED).inc()
                log.error("model %s: %s is not served: %s; %s stays", serving.name, path, e, serving.directory)
                raise ServiceError(Status.INVALID_ARGUMENT, f"model {serving.name!r}: {path} is not served: {e}; "
                                   f"{serving.directory} goes on serving") from None
            checked = (f"self-check WER {wer:.3f} on its canaries" if wer >= 0
                       else "no canaries/: decoded generated audio as its self-check")
            self._end_candidate(serving.name, REPLACED, "another reload of the model came first")
            if not stage:
                self._switch(serving, new)
                self.metrics.model_reloads.labels(serving.name, RELOADED).inc()
                message = (f"model {serving.name!r}: {path} serving ({new.spec.name} {new.spec.version}; "
                           f"loaded and checked in {time.monotonic() - started:.1f} s, {checked})")
                log.info("%s", message)
                return ReloadOutcome(RELOADED, message, new, self_check_wer=wer)
            candidate = Candidate(new, serving, Evaluation(self.cfg.promotion_min_canaries,
                                                           self.cfg.promotion_max_wer_increase),
                                  wer, time.monotonic() + self.cfg.promotion_timeout_seconds)
            self._candidates[serving.name] = candidate
            self.speech.models.stage(serving.name, candidate.offer)
            self._show(serving.name, candidate.evaluation)
            candidate.worker = self._spawn(self._evaluate(candidate))
            self.metrics.model_reloads.labels(serving.name, STAGED).inc()
            log.info("model %s: %s staged as a candidate (%s); it needs %d canaries per set within %.0f s",
                     serving.name, path, checked, self.cfg.promotion_min_canaries, self.cfg.promotion_timeout_seconds)
        decision = await asyncio.shield(candidate.decided)
        return ReloadOutcome(decision.result, decision.message, self.speech.models.get(serving.name), decision.sets,
                             wer)

    def _show(self, name: str, evaluation: Evaluation) -> None:
        """A new evaluation's numbers replace the last one's (kept until then, to show its decision)."""
        previous = self._shown.get(name)
        for set_name in previous.sets if previous else ():
            self.metrics.promotion_canaries.remove(name, set_name)
            for side in ("candidate", "serving"):
                self.metrics.promotion_wer.remove(name, set_name, side)
        self._shown[name] = evaluation

    async def reload_all(self) -> None:
        """SIGHUP: every model re-read from its directory, one after another."""
        for name in self.speech.models.names():
            with contextlib.suppress(ServiceError):  # logged and counted; the old one serves on
                await self.reload(name, "", stage=False)

    def _switch(self, serving: ServedModel, new: ServedModel) -> None:
        self.speech.models.replace(new)
        announce(self.metrics, new, serving)
        self._retiring.add(serving)
        self._spawn(self._retire(serving))

    async def _retire(self, old: ServedModel) -> None:
        """Frees a replaced model once the calls that started on it have ended."""
        while old.users:
            await asyncio.sleep(0.05)
        self._retiring.discard(old)
        described = f"model {old.name}: {old.directory} ({old.spec.version}) freed"
        await self._free(old)
        log.info("%s", described)

    async def _free(self, served: ServedModel) -> None:
        await served.close()
        # The caller's reference goes when its step of the task ends: the memory is given back after.
        asyncio.get_running_loop().call_soon(release_memory)

    async def _evaluate(self, candidate: Candidate) -> None:
        name = candidate.serving.name
        while not candidate.decided.done():
            remaining = candidate.deadline - time.monotonic()
            try:
                job = await asyncio.wait_for(candidate.queue.get(), max(remaining, 0.0))
            except TimeoutError:
                self._end_candidate(name, EXPIRED, f"fewer than {self.cfg.promotion_min_canaries} canaries per "
                                    f"set in {self.cfg.promotion_timeout_seconds:g} s")
                return
            try:
                text = await self.speech.transcribe_quietly(candidate.served, job.sc, replay(job.messages),
                                                            job.endpoint)
            except ServiceError as e:  # the audio was the serving model's to refuse; it is not counted
                log.warning("model %s: the candidate could not decode a canary (%s)", name, e.message)
                continue
            label = candidate.serving.canaries.label(job.score.set)
            tally = candidate.evaluation.add(label, job.score, canary.score(job.reference, text, label))
            self.metrics.promotion_wer.labels(name, label, "candidate").set(tally.candidate_wer)
            self.metrics.promotion_wer.labels(name, label, "serving").set(tally.serving_wer)
            self.metrics.promotion_canaries.labels(name, label).set(tally.canaries)
            decision = candidate.evaluation.decision()
            if decision is not None:
                self._decide(candidate, decision)

    def _decide(self, candidate: Candidate, decision: Decision) -> None:
        name = candidate.serving.name
        self._candidates.pop(name, None)
        self.speech.models.unstage(name)
        if decision.result == PROMOTED:
            self._switch(candidate.serving, candidate.served)
        else:
            self._spawn(self._free(candidate.served))
        self.metrics.model_promotions.labels(name, decision.result).inc()
        (log.info if decision.result == PROMOTED else log.warning)(
            "model %s: candidate %s %s", name, candidate.served.directory, decision.message)
        candidate.decided.set_result(decision)

    def _end_candidate(self, name: str, result: str, why: str) -> None:
        candidate = self._candidates.get(name)
        if candidate is None:
            return
        if candidate.worker is not None and candidate.worker is not asyncio.current_task():
            candidate.worker.cancel()
        self._decide(candidate, candidate.evaluation.ended(result, why))

    def stop_candidates(self) -> None:
        for name in list(self._candidates):
            self._end_candidate(name, STOPPED, "the server is shutting down")

    async def close(self) -> None:
        """Server stop (calls in flight have ended): candidates dropped (stopped), replaced models freed."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stop_candidates()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # the candidates' own close
        for old in list(self._retiring):
            await old.close()

