"""Compile every llmft pipeline to dist/*.yaml: `python compile.py [--profiles p.yaml] [--images i.yaml]`."""

import argparse
import sys

from pipelines.compile_pipeline import add_arguments, compile_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(compile_command(parser.parse_args()))
