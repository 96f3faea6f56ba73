"""Compiles the native beam search (engine/decoder/native/beam_search.cpp) with KenLM's C++ sources.

    python -m engine.decoder.native.build [--jobs N] [--force]

KenLM's sources come from the `kenlm` source package on PyPI (the version the
Python module is), fetched once into third_party/kenlm; they are compiled once
into third_party/kenlm/native-build and linked with the decoder into
engine/decoder/native/_beam_search*.so. Needs a C++17 compiler and zlib's headers
(the kenlm Python module needs the same); about two minutes on two cores.
`make serve` and `make test` run it; where it fails the service decodes with the
Python beam search and says so.
"""

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import pybind11

KENLM_VERSION = "0.3.0"
ROOT = Path(__file__).resolve().parents[3]
KENLM_DIR = ROOT / "third_party" / "kenlm"
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "beam_search.cpp"
# What the kenlm Python module is built with (its setup.py): a model's order is at most 6.
FLAGS = ["-O3", "-DNDEBUG", "-DKENLM_MAX_ORDER=6", "-DHAVE_ZLIB", "-std=c++17", "-fPIC", "-fvisibility=hidden"]
SANITIZE = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def kenlm_source() -> Path:
    """third_party/kenlm: the kenlm source package, fetched from PyPI if not there yet."""
    if (KENLM_DIR / "lm" / "model.hh").exists():
        return KENLM_DIR
    KENLM_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fetching the kenlm {KENLM_VERSION} source package", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "kenlm",
                        "-d", tmp, f"kenlm=={KENLM_VERSION}"], check=True)
        with tarfile.open(next(Path(tmp).glob("kenlm-*.tar.gz"))) as tar:
            # the "data" filter (no paths out of tmp) exists from Python 3.11.4 (Debian 12 has 3.11.2)
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        src = next(p for p in Path(tmp).iterdir() if p.is_dir() and p.name.startswith("kenlm-"))
        if not KENLM_DIR.exists():
            shutil.move(src, KENLM_DIR)
    return KENLM_DIR


def extension_path() -> Path:
    return HERE / f"_beam_search{sysconfig.get_config_var('EXT_SUFFIX')}"


def _compile(cxx: str, src: Path, obj: Path, includes: list[str]) -> Path:
    if not obj.exists() or obj.stat().st_mtime < src.stat().st_mtime:  # -w: KenLM's own deprecation warnings
        subprocess.run([cxx, *FLAGS, "-w", *(f"-I{i}" for i in includes), "-c", str(src), "-o", str(obj)], check=True)
    return obj


def build(jobs: int, force: bool = False, sanitize: bool = False) -> Path:
    """`sanitize`: the engine (not KenLM) under AddressSanitizer and UndefinedBehaviorSanitizer, for
    tests only (load it with libasan preloaded: scripts/sanitize_native.sh)."""
    out = extension_path()
    if (not force and not sanitize and out.exists()
            and out.stat().st_mtime >= max(SOURCE.stat().st_mtime, Path(__file__).stat().st_mtime)):
        return out
    kenlm = kenlm_source()
    cxx = os.environ.get("CXX", "g++")
    sources = [p for pattern in ("util/*.cc", "lm/*.cc", "util/double-conversion/*.cc")
               for p in sorted(kenlm.glob(pattern)) if not p.name.endswith(("main.cc", "test.cc"))]
    objects_dir = kenlm / "native-build"
    objects_dir.mkdir(exist_ok=True)
    includes = [str(kenlm), pybind11.get_include(), sysconfig.get_paths()["include"]]
    print(f"compiling the native beam search ({len(sources)} KenLM sources, {jobs} jobs; a few minutes the "
          "first time)", file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(_compile, cxx, s, objects_dir / (s.parent.name + "_" + s.stem + ".o"), includes)
                   for s in sources]
        for done, _ in enumerate(concurrent.futures.as_completed(futures), 1):
            print(f"\r  KenLM sources: {done}/{len(sources)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        objects = [f.result() for f in futures]
    print("  linking the beam search", file=sys.stderr)
    tmp = out.with_suffix(".tmp")
    flags = [*FLAGS, *SANITIZE] if sanitize else FLAGS  # the later -O1 wins: fewer frames optimized away
    subprocess.run([cxx, *flags, "-shared", *(f"-I{i}" for i in includes), str(SOURCE), *map(str, objects),
                    "-o", str(tmp), "-lz", "-lrt"], check=True)
    tmp.replace(out)  # atomic: a running server never loads a half-written library
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
    p.add_argument("--force", action="store_true", help="rebuild even if the library is up to date")
    p.add_argument("--sanitize", action="store_true", help="build the engine under ASan and UBSan in place of "
                   "the library (tests only, in a copy of the tree: scripts/sanitize_native.sh)")
    a = p.parse_args()
    print(f"built {build(a.jobs, a.force, a.sanitize).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
