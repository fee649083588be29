"""Command line: ``python -m clawproxy`` / ``clawproxy``.

Configuration comes from ``--config PATH`` (or ``CLAWPROXY_CONFIG``), with flags that
override the common keys; the file is validated as written before the flags apply. A bad
configuration, or a log file that cannot be opened, stops start-up with one line naming
the key and exit code 2. ``--demo`` starts the built-in Ollama simulator in the same
process and points the gateway at it, so a newcomer sees a reply stream with no Ollama
installed; its admin port is any free one unless the file or ``--debug-port`` names one,
so a second demo (``scripts/demo --port 9000``) starts beside the first.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys

from clawproxy import __version__
from clawproxy.config import ConfigError, load_config
from clawproxy.process.runner import EXIT_CONFIG, run, serve
from clawproxy.telemetry.logs import setup_logging


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own, sized to the terminal without importing shutil: argparse builds a
    formatter for every add_argument(), and shutil (with bz2 and lzma) would stay loaded,
    half a MiB of the gateway's idle memory, for a help text it rarely prints."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
        except (ValueError, OSError):
            columns = 80
        super().__init__(prog, width=max(columns, 40) - 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clawproxy",
        description="OpenAI-compatible gateway in front of Ollama.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help="YAML config (default: $CLAWPROXY_CONFIG)")
    parser.add_argument("--host", help="listen address (server.host)")
    parser.add_argument("--port", type=int, help="listen port (server.port; 0 picks a free one)")
    parser.add_argument(
        "--debug-port",
        type=int,
        metavar="PORT",
        help="admin port (gateway.debug_port; 0 picks a free one, shown at start; "
        "--demo: 0 unless set)",
    )
    parser.add_argument("--upstream", metavar="URL", help="Ollama endpoint (model.endpoint)")
    parser.add_argument("--model", help="default model (model.name)")
    parser.add_argument("--log-level", help="debug, info, warning, error (logging.level)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run against the built-in Ollama simulator (no Ollama needed)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N gateway processes on the port (SO_REUSEPORT, one gateway per port); "
        "limits are split (README)",
    )
    parser.add_argument("--version", action="version", version=f"clawproxy {__version__}")
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    pairs = {
        "server.host": args.host,
        "server.port": args.port,
        "gateway.debug_port": args.debug_port,
        "model.endpoint": args.upstream,
        "model.name": args.model,
        "logging.level": args.log_level,
    }
    return {key: value for key, value in pairs.items() if value is not None}


# --demo's defaults, under the file and the flags: any free admin port, so that demos side
# by side do not fight over 18789.
DEMO_DEFAULTS: dict[str, object] = {"gateway.debug_port": 0}


def log_file_problem(path: str, exc: OSError) -> str:
    """Why ``logging.file`` cannot be opened, as one line naming the key and the path."""
    reason = exc.strerror or str(exc)
    folder = os.path.dirname(os.path.abspath(path))
    if exc.errno == errno.ENOENT and not os.path.isdir(folder):
        reason += f" (the folder {folder} does not exist)"
    return f"logging.file: cannot open {path} for writing: {reason}"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # SIGHUP rereads the file the same way (its nodes: list applies live).
    reread = functools.partial(
        load_config,
        args.config,
        overrides=overrides_from(args),
        defaults=DEMO_DEFAULTS if args.demo else None,
    )
    try:
        config = reread()
    except ConfigError as exc:
        print(f"clawproxy: config error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        setup_logging(config.logging)
    except OSError as exc:
        problem = log_file_problem(config.logging.file or "", exc)
        print(f"clawproxy: config error: {problem}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if args.workers != 1:
        from clawproxy.process.workers import supervise

        sys.exit(supervise(config, args.workers, demo=args.demo, reread=reread))
    run(serve(config, demo=args.demo, reread=reread))
