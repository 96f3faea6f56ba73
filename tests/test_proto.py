"""The committed gRPC code is what scripts/gen_proto.sh generates from proto/."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

GENERATED = ["asr_pb2.py", "asr_pb2.pyi", "asr_pb2_grpc.py"]


def test_generated_code_is_fresh(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run([str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, env=env)
    for name in GENERATED:
        fresh = (tmp_path / "ctc_asr" / "v1" / name).read_text()
        committed = (ROOT / "ctc_asr" / "v1" / name).read_text()
        assert fresh == committed, f"ctc_asr/v1/{name} is stale: run `make proto` and commit the result"
