"""The ``attnscope`` command line: parses, calls the library, prints.

It holds no logic the library lacks. Library errors (AttnscopeError) are printed
as one line without a traceback, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from attnscope._version import __version__
from attnscope.errors import AttnscopeError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _cmd_layers(args: argparse.Namespace) -> int:
    from attnscope.layers.registry import attn_options, describe_attn, list_attn

    names = list_attn()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {describe_attn(name)}")
        if args.options:
            print(f"{'':<{width}}  options: {', '.join(attn_options(name))}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from attnscope.models import list_models, model_summary

    rows = [model_summary(name, num_classes=args.num_classes) for name in list_models()]
    print(f"{'model':<18} {'params':>8} {'input':>11} {'taps':>4}  {'weights':<20} paper")
    for row in rows:
        size = "x".join(str(n) for n in row["input_size"])
        print(f"{row['model']:<18} {row['params'] / 1e6:>7.2f}M {size:>11} {row['attention_taps']:>4}  "
              f"{row['pretrained']:<20} {row['paper']}")
    print(f"(parameters with a {args.num_classes}-class head)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnscope",
        description="Build, train, evaluate and explain attention-augmented image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"attnscope {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    layers = verbs.add_parser("layers", help="list the attention layers create_attn knows")
    layers.add_argument("--options", action="store_true", help="also list each layer's options")
    layers.set_defaults(run=_cmd_layers)

    models = verbs.add_parser("models", help="list the models create_model knows, with sizes")
    models.add_argument("--num-classes", type=int, default=2, help="classifier width to count (default: 2)")
    models.set_defaults(run=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verb is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.run(args)
    except AttnscopeError as error:
        print(f"attnscope: error: {error}", file=sys.stderr)
        return EXIT_ERROR
