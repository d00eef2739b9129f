"""Compile every llmft pipeline to dist/*.yaml: `python compile.py [--profiles p.yaml] [--images i.yaml]`."""

import argparse
import sys

from components.images import ImagesConfigError

if __name__ == "__main__":
    try:
        # The component modules resolve their images (LLMFT_IMAGES_FILE) when they are imported.
        from pipelines.compile_pipeline import add_arguments, compile_command
    except ImagesConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)  # compile_pipeline.EXIT_BAD_INPUT, which could not be imported
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(compile_command(parser.parse_args()))
