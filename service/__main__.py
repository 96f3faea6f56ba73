"""python -m service [--model DIR] [--port N] ...: see `python -m service --help`."""

import asyncio
import logging

from service.config import parse_args
from service.server import serve


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(parse_args()))


if __name__ == "__main__":
    main()
