"""Copy a model repository into the directory Triton serves it from: the init container of engine pods.

A `trtllm-engine` repository's tensorrt_llm model opens its engine by absolute path (`gpt_model_path`
under the build's `model_repository_path`). Triton given an s3:// repository downloads it to a temporary
directory where that path does not exist, so the kubernetes target runs this first, in the llmft base
image, to put the repository at exactly that path (an emptyDir shared with the tritonserver container):

    python -m components.rollout.fetch_repository s3://bucket/runs/<run>/build /models

`components.storage.download_dir` does the copy: it refuses a repository without a manifest or with
files missing, checks every file's sha256, and writes the manifest last. S3 access is boto3's: the
AWS_* variables the Deployment sets (credentials by secretKeyRef, AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL_S3), else the pod's own identity. Exit status 0 when the copy is complete, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys

from components import storage

log = logging.getLogger(__name__)

PROG = "python -m components.rollout.fetch_repository"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Copy a complete llmft model repository to a local directory, verified."
    )
    parser.add_argument("repository", help="the repository (s3:// URI or path) with its manifest")
    parser.add_argument("directory", help="where to put it (Triton's --model-repository)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        manifest = storage.download_dir(args.repository, args.directory)
    except (storage.IncompleteDirectoryError, storage.StorageError, FileExistsError) as error:
        log.error("cannot fetch the model repository: %s", error)
        return 1
    log.info(
        "model repository %s (digest %s) is ready in %s", args.repository, manifest.digest, args.directory
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
