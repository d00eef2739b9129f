"""Compile llm_finetune to the YAML a user uploads in the Kubeflow UI.

Images come from containers/images.yaml (or --images), cluster settings per step from a
preset (p5 by default) overridden by --profiles. The output is deterministic: compiling
twice with the same inputs gives identical bytes.

`python compile.py` and `llmft compile` share `compile_command`: a bad profiles or images file
is one line on stderr naming the file and field, exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kfp import compiler

from components.images import ImagesConfigError, load_images
from components.resources import PRESETS, ProfileConfigError, load_profiles
from pipelines.llm_finetune import build_pipeline

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("dist/llm_finetune.yaml")
EXIT_BAD_INPUT = 2  # a profiles or images file is invalid: nothing was written
EXIT_WRITE_FAILED = 1


def compile_pipeline(
    output: str | Path = DEFAULT_OUTPUT,
    profiles_file: str | None = None,
    preset: str = "p5",
    images_file: str | None = None,
) -> Path:
    output = Path(output)
    # Every input is read and checked before anything is created.
    pipeline = build_pipeline(load_profiles(profiles_file, preset=preset), load_images(images_file))
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output))
    log.info("wrote %s", output)
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", default=str(DEFAULT_OUTPUT), help=f"where to write (default: {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--profiles",
        default=None,
        help="YAML file overriding per-step cluster settings (see components/resources.py)",
    )
    parser.add_argument(
        "--preset",
        default="p5",
        choices=PRESETS,
        help="cluster preset the profiles start from (default: p5); GPU and EFA counts are checked "
        "against its node",
    )
    parser.add_argument("--images", default=None, help="images file (default: containers/images.yaml)")


def compile_command(args: argparse.Namespace) -> int:
    """Compile with the command line's settings; returns the exit code."""
    try:
        path = compile_pipeline(args.output, args.profiles, args.preset, args.images)
    except (ProfileConfigError, ImagesConfigError) as error:
        # The message names the file, step and field: a traceback would only bury it.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(f"error: cannot write --output {args.output}: {error.strerror or error}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    print(f"compiled pipeline: {path}")
    return 0
