"""Command line entry point: ``python -m crm_dagster.sandbox --help``.

The first line on stdout is ``CRM sandbox serving http://127.0.0.1:PORT``. SIGINT and SIGTERM
stop the server and exit with status 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from crm_dagster.sandbox.server import DEFAULT_API_KEY, SandboxServer

logger = logging.getLogger("crm_dagster.sandbox")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the sandbox command."""
    parser = argparse.ArgumentParser(
        prog="python -m crm_dagster.sandbox",
        description="Serve the sandbox CRM API on 127.0.0.1 until SIGINT or SIGTERM.",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port to bind, or 0 for a free port (default 0)"
    )
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help=f"key that requests must send (default {DEFAULT_API_KEY!r})",
    )
    parser.add_argument(
        "--api-key-param",
        metavar="NAME",
        help="query parameter that carries the key on both endpoints "
        "(default: api_key on /v1/resource, api_token on /v1/persons)",
    )

    parser.add_argument(
        "--records", type=int, default=1000, help="number of records to serve (default 1000)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the generated records (default 0)"
    )

    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="milliseconds to sleep before each /v1 response (default 0)",
    )
    parser.add_argument(
        "--no-total", action="store_true", help="leave total out of /v1/resource responses"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="queue a fault such as status:503x3 or drop@100, and repeat the option for more "
        "faults (grammar KIND[:ARG][xCOUNT][@OFFSET], described in crm_dagster/sandbox/faults.py)",
    )

    parser.add_argument(
        "--request-log", metavar="FILE", help="append one JSON line per /v1 request to FILE"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log each request and fault to stderr"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox server until SIGINT or SIGTERM and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        server = SandboxServer(
            records=args.records,
            api_key=args.api_key,
            seed=args.seed,
            port=args.port,
            latency_ms=args.latency_ms,
            include_total=not args.no_total,
            faults=args.fault,
            request_log=args.request_log,
            api_key_param=args.api_key_param,
        )
    except ValueError as error:
        parser.error(str(error))

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        server.start()
    except OSError as error:
        logger.error("cannot bind 127.0.0.1:%d: %s", args.port, error)
        return 1
    # Tests and scripts read the URL from this first stdout line.
    sys.stdout.write(f"CRM sandbox serving {server.base_url}\n")
    sys.stdout.flush()
    try:
        stop_requested.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
