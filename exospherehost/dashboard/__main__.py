"""`python -m exospherehost.dashboard`: serve the dashboard.

The Redis password is read from EXOSPHERE_API_KEY only, never from the command line,
where other users could see it in the process list."""

from __future__ import annotations

import argparse

from exospherehost.dashboard import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m exospherehost.dashboard")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument(
        "--redis-url", default=None, help="redis://host:port/db (default: $EXOSPHERE_REDIS_URL)"
    )
    parser.add_argument("--namespace", default=None, help="show only this namespace")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.redis_url, None, args.namespace)


if __name__ == "__main__":
    main()
