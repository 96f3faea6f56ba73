"""python -m service [--model DIR] [--port N] ...: see `python -m service --help`."""

import asyncio
import logging
import sys

from engine.model.directory import ModelDirectoryError
from engine.model.session import one_blas_thread
from service.config import parse_args
from service.lifecycle.loading import tune_malloc
from service.server import StartupError, serve


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_malloc()
    one_blas_thread()
    try:
        asyncio.run(serve(parse_args()))
    except (ModelDirectoryError, StartupError) as e:  # before anything is served: one line, as argparse's
        print(f"python -m service: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
