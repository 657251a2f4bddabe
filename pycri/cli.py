"""The `pycri` command: serve, config, info, check, install-service (and the offline image tools)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from pycri import __version__
from pycri.cli_images import add_images_commands, run_images
from pycri.config import LOG_FORMATS, LOG_LEVELS, Config, ConfigError, ConfigSource, config_to_toml
from pycri.log import setup_logging
from pycri.sdnotify import ServiceManager
from pycri.service_unit import UNIT_DIR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pycri", description="A Kubernetes CRI v1 runtime on runc, conmon and CNI.")
    parser.add_argument("--version", action="version", version=f"pycri {__version__}")
    parser.add_argument("--config", type=Path, help="config file (default /etc/pycri/pycri.toml if it exists)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="overrides the config's log_level")
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="overrides the config's log_format")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve CRI v1 on the configured unix socket")
    commands.add_parser("config", help="print the effective config as TOML")
    commands.add_parser("info", help="print versions of pycri, runc, conmon, CNI plugins and what is missing")
    commands.add_parser("check", help="check that this host can run pycri; say what is missing and how to fix it")
    install = commands.add_parser("install-service", help="write pycri's systemd unit for this pycri and enable it")
    install.add_argument("--unit-dir", type=Path, default=UNIT_DIR, help=f"where the unit goes (default {UNIT_DIR})")
    install.add_argument("--now", action="store_true", help="start pycri too")
    install.add_argument("--force", action="store_true", help="replace a different pycri.service")
    add_images_commands(commands)
    return parser


def _serve(config: Config, source: ConfigSource, service_manager: ServiceManager) -> int:
    from pycri.daemon import AlreadyRunning
    from pycri.server.app import serve
    from pycri.telemetry import MetricsUnavailable
    from pycri.unix_socket import SocketInUse

    try:
        asyncio.run(serve(config, source, service_manager))
    except (AlreadyRunning, SocketInUse, MetricsUnavailable) as exc:
        print(f"pycri: {exc}", file=sys.stderr)
        return 1
    return 0


def _info(config: Config) -> int:
    from pycri.hostinfo import collect_host_info

    info = collect_host_info(config)
    print(info.to_json())
    for problem in info.missing:
        print(f"missing: {problem}", file=sys.stderr)
    return 1 if info.missing else 0


def _check(config: Config) -> int:
    from pycri.hostcheck import check_host, render
    from pycri.hostinfo import collect_host_info

    checks = check_host(config, collect_host_info(config))
    sys.stdout.write(render(checks))
    return 1 if any(not check.ok and check.required for check in checks) else 0


def _install_service(args: argparse.Namespace) -> int:
    from pycri.service_unit import InstallError, install_unit, pycri_command, render_unit

    try:
        installed = install_unit(
            render_unit(pycri_command(), args.config), args.unit_dir, start=args.now, force=args.force
        )
    except InstallError as exc:
        print(f"pycri: {exc}", file=sys.stderr)
        return 1
    print(f"{'wrote' if installed.changed else 'unchanged:'} {installed.path}")
    if installed.enabled:
        print("enabled pycri.service" + (" and started it" if args.now else ""))
    if installed.next_steps:
        print(f"next: {installed.next_steps}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Command-line overrides win over the file at start and at every reload.
    source = ConfigSource(args.config, {"log_level": args.log_level, "log_format": args.log_format})
    try:
        config = source.load()
    except ConfigError as exc:
        print(f"pycri: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    # Before any child starts: runc, conmon and CNI plugins must not inherit NOTIFY_SOCKET and its kin.
    service_manager = ServiceManager.from_environment(os.environ)
    if args.command == "serve":
        return _serve(config, source, service_manager)
    if args.command == "images":
        return run_images(config, args)
    if args.command == "config":
        sys.stdout.write(config_to_toml(config))
        return 0
    if args.command == "check":
        return _check(config)
    if args.command == "install-service":
        return _install_service(args)
    return _info(config)
