"""Google's long-running operations (`google.longrunning.Operations`) for LongRunningRecognize:
a job per call, run beside the RPCs, polled by name with its progress until its results or its
error. Jobs live in this process only: a restart or a drain ends them (docs/protocols.md).

Bounded: at most `most` operations are kept (the oldest finished ones go first; with all of them
running, a new call is RESOURCE_EXHAUSTED), a finished one for `keep_seconds`; an operation is
visible only to the client that started it (others get NOT_FOUND)."""

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from service.errors import ServiceError, Status
from service.session.audio import AudioError
from service.session.speech import Speech
from service.transports.grpc_api import abort, caller

log = logging.getLogger(__name__)
SERVICE = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name
METHODS = {"GetOperation": "google.GetOperation", "CancelOperation": "google.CancelOperation",
           "DeleteOperation": "google.DeleteOperation"}


def timestamp(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


@dataclass(eq=False)
class Job:
    name: str
    client: str
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    progress: float = 0.0
    task: asyncio.Task | None = None
    response: object = None  # the finished call's response message
    error: ServiceError | None = None
    ended: float | None = None

    def report(self, share: float) -> None:
        self.progress, self.updated = share, time.time()


class Operations(operations_pb2_grpc.OperationsServicer):
    def __init__(self, speech: Speech, by_token: bool, metadata: Callable[[Job], object],
                 most: int = 1000, keep_seconds: float = 3600.0) -> None:
        """`metadata(job)`: the message an operation's `metadata` carries (its progress)."""
        self.speech = speech
        self.by_token = by_token
        self._metadata = metadata
        self._most, self._keep = most, keep_seconds
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def start(self, client: str, work: Callable[[Job], Awaitable[object]]) -> operations_pb2.Operation:
        """A new operation running `work(job)`, whose result is the operation's response."""
        self._forget()
        if len(self._jobs) >= self._most:
            raise ServiceError(Status.RESOURCE_EXHAUSTED, f"{self._most} long-running operations are running; "
                               "retry when one has finished")
        job = Job(uuid.uuid4().hex, client)
        self._jobs[job.name] = job

        async def run() -> None:
            try:
                job.response = await work(job)
                job.report(1.0)
            except ServiceError as e:
                job.error = e
            except AudioError as e:  # audio that cannot be decoded, found once the call has answered
                job.error = ServiceError(Status.INVALID_ARGUMENT, str(e))
            except asyncio.CancelledError:
                job.error = ServiceError(Status.CANCELLED, "the operation was cancelled")
            except Exception:
                log.exception("long-running operation %s failed", job.name)
                job.error = ServiceError(Status.INTERNAL, "internal error")
            finally:
                job.ended = time.time()
        job.task = asyncio.get_running_loop().create_task(run())
        return self._operation(job)

    def _forget(self) -> None:
        """Finished operations past their time, then the oldest finished ones while over the bound."""
        now = time.time()
        for name, job in list(self._jobs.items()):
            if job.ended is not None and (now - job.ended > self._keep or len(self._jobs) >= self._most):
                del self._jobs[name]

    def _operation(self, job: Job) -> operations_pb2.Operation:
        operation = operations_pb2.Operation(name=job.name, done=job.ended is not None)
        operation.metadata.Pack(self._metadata(job))
        if job.error is not None:
            code = grpc.StatusCode[job.error.status.name].value[0]
            operation.error.CopyFrom(status_pb2.Status(code=code, message=job.error.message))
        elif job.response is not None:
            operation.response.Pack(job.response)
        return operation

    def _job(self, name: str, context) -> Job:
        job = self._jobs.get(name)
        if job is None or job.client != caller(context, self.by_token):
            raise ServiceError(Status.NOT_FOUND, f"no operation {name[:100]!r} (finished ones are kept "
                               f"{self._keep:g} s)")
        return job

    async def GetOperation(self, request, context):
        try:
            async with self.speech.call(METHODS["GetOperation"]):
                return self._operation(self._job(request.name, context))
        except ServiceError as e:
            await abort(context, e)

    async def CancelOperation(self, request, context):
        try:
            async with self.speech.call(METHODS["CancelOperation"]):
                job = self._job(request.name, context)
                if job.task is not None:
                    job.task.cancel()
                return empty_pb2.Empty()
        except ServiceError as e:
            await abort(context, e)

    async def DeleteOperation(self, request, context):
        try:
            async with self.speech.call(METHODS["DeleteOperation"]):
                job = self._jobs.pop(self._job(request.name, context).name)
                if job.task is not None:
                    job.task.cancel()
                return empty_pb2.Empty()
        except ServiceError as e:
            await abort(context, e)

    async def close(self) -> None:
        """Server stop: running operations are cancelled."""
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
