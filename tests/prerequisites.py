"""What the test suite needs from the machine, in one table.

    python tests/prerequisites.py

`make test` runs this first: it names each missing system package with the command that
installs it (Debian; `.ci/run` installs them all), and fails only where the suite cannot run
at all. Tests that need a missing optional one are skipped with that reason (`requires`).
"""

import shutil
import sys
from pathlib import Path

import pytest


def _tool(*names: str):
    return lambda: all(shutil.which(n) for n in names)


def _file(path: str):
    return lambda: Path(path).exists()


# name -> (is it there, Debian packages, what needs it, required)
PREREQUISITES = {
    "g++": (_tool("g++"), "g++", "the native beam search and the kenlm module", True),
    "zlib": (_file("/usr/include/zlib.h"), "zlib1g-dev", "the native beam search and the kenlm module", True),
    "ffmpeg": (_tool("ffmpeg"), "ffmpeg", "M4A/AAC uploads", False),
    "openssl": (_tool("openssl"), "openssl", "TLS certificates for the security tests", False),
    "promtool": (_tool("prometheus", "promtool"), "prometheus", "alert rules and the monitoring setup", False),
    "chromium": (_tool("chromium", "chromedriver"), "chromium chromium-driver", "the browser page", False),
    "kubectl": (_tool("kubectl"), "kubectl", "rendering the Kubernetes manifests (kustomize v5: Kubernetes' own apt "
                "repository; Debian 12's kubernetes-client 1.20 is too old)", False),
    "lmplz": (lambda: _tool("cmake")() and Path("/usr/include/boost/program_options.hpp").exists(),
              "cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev",
              "building KenLM's lmplz (language models)", False),
    "wordnet": (_file("/usr/share/wordnet/data.noun"), "wordnet-base", "the language model's English text", False),
    "fortunes": (lambda: Path("/usr/share/games/fortunes/fortunes").exists()
                 and Path("/usr/share/games/fortunes/literature").exists(),
                 "fortunes-min fortunes", "English sentences for training and evaluation", False),
    "espeak-ng and flite": (_tool("espeak-ng", "flite"), "espeak-ng flite", "synthesized sentences for the long "
                            "recordings' tests", False),
    "synthesis": (_tool("espeak-ng", "flite", "text2wave", "pico2wave", "RHVoice-test", "mbrola"),
                  "espeak-ng flite festival festvox-kdlpc16k festvox-us-slt-hts libttspico-utils rhvoice "
                  "rhvoice-english mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1",
                  "synthesized speech for the corpus (SVOX Pico, RHVoice, MBROLA: Debian contrib and non-free)", False),
}


def missing(*names: str) -> list[str]:
    return [n for n in names if not PREREQUISITES[n][0]()]


def install_command(names: list[str]) -> str:
    return "apt-get install " + " ".join(PREREQUISITES[n][1] for n in names)


def requires(*names: str) -> pytest.MarkDecorator:
    """Skips a test (or a module, as `pytestmark`) where a prerequisite is missing, saying which and how to
    install it."""
    absent = missing(*names)
    return pytest.mark.skipif(bool(absent), reason=f"needs {', '.join(absent)} ({install_command(absent)})"
                              if absent else "")


def main() -> int:
    absent = missing(*PREREQUISITES)
    for name in absent:
        _, packages, purpose, required = PREREQUISITES[name]
        print(f"{'missing' if required else 'skipping tests of'} {purpose}: {name} not found "
              f"(apt-get install {packages})", file=sys.stderr)
    if absent:
        print(f"to install everything the suite uses: {install_command(absent)}", file=sys.stderr)
    required = [n for n in absent if PREREQUISITES[n][3]]
    if required:
        print(f"cannot run the tests without {', '.join(required)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
