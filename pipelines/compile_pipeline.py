"""Compile llm_finetune to the YAML a user uploads in the Kubeflow UI.

Images come from containers/images.yaml (or --images), cluster settings per step from a
preset (p5 by default) overridden by --profiles. The output is deterministic: compiling
twice with the same inputs gives identical bytes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kfp import compiler

from components.images import load_images
from components.resources import load_profiles
from pipelines.llm_finetune import build_pipeline

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("dist/llm_finetune.yaml")


def compile_pipeline(
    output: str | Path = DEFAULT_OUTPUT,
    profiles_file: str | None = None,
    preset: str = "p5",
    images_file: str | None = None,
) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(load_profiles(profiles_file, preset=preset), load_images(images_file))
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
        "--preset", default="p5", help="cluster preset the profiles start from: p5, p4d or cpu"
    )
    parser.add_argument("--images", default=None, help="images file (default: containers/images.yaml)")


def compile_command(args: argparse.Namespace) -> int:
    path = compile_pipeline(args.output, args.profiles, args.preset, args.images)
    print(f"compiled pipeline: {path}")
    return 0
