"""A real server (grpc.aio, ONNX Runtime, pyctcdecode + KenLM) on port 0 in a
background event loop, and real channels to it."""

import asyncio
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from ctc_asr.v1 import asr_pb2_grpc
from service import server
from service.config import BUNDLED_MODEL, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
BUNDLED = BUNDLED_MODEL


class ServerThread:
    def __init__(self, cfg: ServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = self.call(server.start(cfg))

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.call(self.running.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# Load shedding off (a loaded CI machine must not shed tests whose subject is not load; the
# shedding tests set their own thresholds); every test is one client on loopback, so per-client
# limits are off too (their tests set them), and the Admin service is open without tokens.
TEST_CONFIG = ServerConfig(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0, http_port=0,
                           provider="cpu",
                           max_unary_audio_seconds=20.0, max_stream_audio_seconds=30.0,
                           max_model_busy_ratio=1.0, max_stream_lag_seconds=3600.0, shed_stream_lag_seconds=3600.0,
                           max_streams_per_client=10_000, max_recognize_per_client=10_000, admin_without_auth=True)


@pytest.fixture(scope="session")
def running():
    srv = ServerThread(TEST_CONFIG)
    yield srv.running
    srv.close()


@pytest.fixture(scope="session")
def channel(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    return asr_pb2_grpc.SpeechStub(channel)


@pytest.fixture
def make_server():
    """Starts extra servers with other settings; stops them after the test."""
    started = []

    def make(**overrides) -> ServerThread:
        started.append(ServerThread(replace(TEST_CONFIG, **overrides)))
        return started[-1]

    yield make
    for srv in started:
        srv.close()


def place(source: Path, target: Path) -> Path:
    """A copy of a bundled model file or folder (a model directory may not link to files outside it)."""
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    return target
