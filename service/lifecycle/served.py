"""The models a server serves, by name: what calls decode with, and what a reload replaces.

`ModelTable` owns the table: calls take a model (`using`), the lifecycle (`service.lifecycle.registry`)
replaces one or stages a candidate beside it, and nothing else writes to it."""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.recognizer import Recognizer
from service.batcher import ModelBatcher
from service.errors import ServiceError, Status
from service.session import canary


@dataclass(eq=False)
class ServedModel:
    """One model a server serves, under the name requests ask for: its streams batch only together.
    `users` counts the calls decoding with it, so that a replaced model is freed only once they end."""
    name: str
    directory: Path
    recognizer: Recognizer
    batcher: ModelBatcher
    canaries: canary.CanaryTracker
    users: int = 0

    @property
    def spec(self):
        return self.recognizer.spec

    async def close(self) -> None:
        await self.batcher.stop()


class ModelTable:
    def __init__(self, models: list[ServedModel]) -> None:
        """`models`: the first is the default."""
        self._models = {m.name: m for m in models}
        self._default = models[0].name
        self._shadows: dict[str, Callable] = {}  # a staged candidate's intake of canaries, by model name

    @property
    def default(self) -> ServedModel:
        return self._models[self._default]

    def names(self) -> list[str]:
        return list(self._models)

    def served(self) -> list[ServedModel]:
        return list(self._models.values())

    def get(self, name: str) -> ServedModel:
        """The model a request names ("" for the default); INVALID_ARGUMENT naming those served."""
        if not name:
            return self.default
        if name not in self._models:
            raise ServiceError(Status.INVALID_ARGUMENT, f"model {name[:100]!r} is not served; this server serves "
                               + ", ".join(repr(n) for n in self._models))
        return self._models[name]

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[ServedModel]:
        """The model a request names, held for the call: a reload switches new calls only."""
        served = self.get(name)
        served.users += 1
        try:
            yield served
        finally:
            served.users -= 1

    def replace(self, new: ServedModel) -> ServedModel:
        """New calls of `new.name` go to `new`; the model it replaces is returned, to be retired."""
        old, self._models[new.name] = self._models[new.name], new
        return old

    def stage(self, name: str, shadow: Callable) -> None:
        """A candidate for model `name`: `shadow` is offered each canary the serving model answers."""
        self._shadows[name] = shadow

    def unstage(self, name: str) -> None:
        self._shadows.pop(name, None)

    def shadow(self, name: str) -> Callable | None:
        return self._shadows.get(name)

    def busy_ratio(self) -> float:
        """The busiest model's share of the last seconds (asr_model_busy_ratio): they share the machine."""
        return max(served.batcher.busy_ratio() for served in self._models.values())

    async def close(self) -> None:
        for served in self._models.values():
            await served.close()
