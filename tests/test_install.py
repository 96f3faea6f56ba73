"""`pip install .` (not editable) gives a server that serves the bundled model: the wheel carries the
model as package data, and the installed server, run from outside the source tree, finds and serves it."""

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT, SAMPLES
from test_recognize import heard


def test_the_installed_server_serves_the_bundled_model(tmp_path):
    source, wheels, site = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    # Built from a copy: a build in the tree would leave build/ there, whose stale files a later build packs.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "data", "runs", "third_party", "build", "tests",
                                                                "*.egg-info", "__pycache__", "checkpoint.pt"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels,
                    source], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("ctc_asr-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"models/pretrained/default/model.onnx", "models/pretrained/default/canaries/manifest.jsonl"} <= set(names)
    # The wheel alone (its dependencies are this environment's), where the source tree is not on the path.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel], check=True,
                   capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("CTC_ASR_MODEL", None)
    server = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0",
                               "--metrics-port", "0", "--http-port", "0", "--provider", "cpu"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port, loaded = None, []
        for line in server.stdout:
            loaded += [line] if "warmed up" in line else []
            if "serving gRPC on" in line:
                port = int(line.split("serving gRPC on ")[1].split()[0].rsplit(":", 1)[1])
                break
        assert port, "the installed server did not start"
        assert len(loaded) == 1 and str(site / "models" / "pretrained" / "default") in loaded[0], loaded
        client = subprocess.run([sys.executable, "-m", "service.client", "--target", f"127.0.0.1:{port}",
                                 SAMPLES / "what_time.wav"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert client.returncode == 0, client.stderr
        assert heard(client.stdout.removeprefix("final: ").split(" (confidence")[0], "what_time.wav"), client.stdout
    finally:
        server.terminate()
        server.wait(30)
