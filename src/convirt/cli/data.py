"""``convirt data ...``: manifest checks, the synthetic generator and dataset preparation.

Each verb lives in its own module ``convirt.cli.data_<verb>`` with ``register(subparsers)``.
"""

from __future__ import annotations

import importlib

VERBS = ["check", "cache", "shard", "synth", "prepare"]


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check, generate and prepare data sets")
    sub = parser.add_subparsers(dest="data_command", metavar="VERB")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"convirt.cli.data_{verb}")
        except ModuleNotFoundError as err:
            if err.name == f"convirt.cli.data_{verb}":
                continue
            raise
        module.register(sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
