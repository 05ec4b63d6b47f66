"""`python -m ddpm_lightning.config --markdown`: the configuration reference (every option of
the data, model, schedule, optimizer and sampler groups: each key's default, what it allows and
its meaning) as Markdown; `--write FILE` replaces the copy embedded in FILE."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_lightning.config.reference import BEGIN, END, markdown, write_reference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lightning.config", description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the reference")
    action.add_argument(
        "--write", type=Path, metavar="FILE", help=f"replace what FILE holds between {BEGIN}"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
    elif BEGIN in (text := args.write.read_text(encoding="utf-8")) and END in text:
        write_reference(args.write)
    else:
        parser.error(f"{args.write} has no {BEGIN} … {END}: add them where the reference goes")


if __name__ == "__main__":
    main()
