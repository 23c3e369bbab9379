"""`python -m exospherehost.dashboard`: serve the dashboard.

The Redis password is read from EXOSPHERE_API_KEY only, never from the command line,
where other users could see it in the process list."""

from __future__ import annotations

import argparse

from exospherehost.dashboard import serve
from exospherehost.errors import ConfigError


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
    parser.add_argument(
        "--token",
        default=None,
        help="required on every request (default: $EXOSPHERE_DASHBOARD_TOKEN); prefer the "
        "variable, as other users can read the command line",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding beyond loopback without a token (a proxy authenticates)",
    )
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, args.redis_url, None, args.namespace, args.token, args.insecure)
    except ConfigError as exc:
        parser.exit(2, f"Error: {exc}\n")


if __name__ == "__main__":
    main()
