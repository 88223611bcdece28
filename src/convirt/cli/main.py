"""The ``convirt`` command: one sub-command group per module in :mod:`convirt.cli`.

Each group module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Group modules, in the order they appear in ``convirt --help``.
GROUPS = ["data", "pretrain", "evaluate", "explain", "benchmark", "corpus", "report", "export", "demo"]


def build_parser() -> argparse.ArgumentParser:
    from convirt import __version__

    parser = argparse.ArgumentParser(
        prog="convirt",
        description="Pretrain medical image encoders from paired images and reports (ConVIRT), "
        "and evaluate them.",
    )
    parser.add_argument("--version", action="version", version=f"convirt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(f"convirt.cli.{name}")
        except ModuleNotFoundError as err:  # a group still being written must not break the others
            if err.name == f"convirt.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from convirt.errors import ConvirtError

    try:
        return int(args.func(args) or 0)
    except ConvirtError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
