"""`llmft model import SRC DEST`: a pinned, checked copy of a model, with an llmft manifest.

SRC is anything a step accepts as a model (an llmft directory, a plain Hugging Face checkpoint
directory, local or s3://, or hf://org/name[@revision]); it is resolved and checked exactly as the
steps do (components/model_source.py). DEST (a path or s3://) receives the model's files and a
manifest written last, so teams can point every run at a copy that cannot change or vanish
upstream. The manifest records where the copy came from and, for the Hub, the commit.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components import storage
from components.model_source import ModelSource, list_model_files, resolve_model

log = logging.getLogger(__name__)

PRODUCER = "llmft.model_import"


@dataclass(frozen=True)
class ImportResult:
    source: ModelSource
    destination: str
    digest: str  # the copy's manifest digest
    files: int
    size: int

    def summary(self) -> str:
        revision = f" (commit {self.source.revision})" if self.source.revision else ""
        return (
            f"imported {self.source.uri}{revision} to {self.destination}: {self.files} files, "
            f"{self.size:,} bytes\ndigest: {self.digest}"
        )


def import_model(source: str, destination: str, cache_root: str | Path | None = None) -> ImportResult:
    """Resolve and check `source`, then publish its model files to `destination` with a manifest."""
    # Import copies a model elsewhere: never over (or into, or around) the model it reads.
    storage.check_apart({"DEST": destination}, {"SRC": source})
    resolved = resolve_model(source, cache_root=cache_root)
    existing = _existing_copy(destination, resolved)
    if existing is not None:
        log.info("%s already holds %s (digest %s)", destination, source, existing.digest)
        return ImportResult(resolved, destination, existing.digest, len(existing.files), existing.total_size)
    metadata = {"source": source, "source_digest": resolved.digest}
    if resolved.revision:
        metadata["source_revision"] = resolved.revision
    # Only the model's files travel: not tool metadata (.cache/huggingface/, .gitattributes) nor an
    # earlier manifest. Symlinks to them (resolved by the copy) keep the staging free of copies.
    with tempfile.TemporaryDirectory(prefix="llmft-import-") as staging:
        for name in list_model_files(resolved.local_dir):
            link = Path(staging) / storage.safe_relative_path(name)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((resolved.local_dir / name).resolve())
        manifest = storage.publish_dir(staging, destination, producer=PRODUCER, metadata=metadata)
    log.info("imported %s to %s (digest %s)", source, destination, manifest.digest)
    return ImportResult(
        source=resolved,
        destination=destination,
        digest=manifest.digest,
        files=len(manifest.files),
        size=manifest.total_size,
    )


def _existing_copy(destination: str, resolved: ModelSource) -> storage.Manifest | None:
    """The manifest of an earlier, complete import of the same model at `destination`; None if the
    place is empty. Anything else there is refused: an import never mixes its files with others."""
    if not storage.exists(destination):
        return None
    if not storage.is_s3(destination) and Path(destination).is_dir() and not any(Path(destination).iterdir()):
        return None
    if storage.exists(storage.join(destination, storage.MANIFEST_NAME)):
        manifest = storage.require_complete(destination)
        if manifest.producer == PRODUCER and manifest.metadata.get("source_digest") == resolved.digest:
            return manifest
    raise ValueError(
        f"DEST {destination} is not empty and holds no earlier import of this model: choose an empty place"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="model_command", required=True)
    import_parser = commands.add_parser(
        "import",
        help="copy a model (checkpoint dir, s3:// or hf://org/name[@revision]) to DEST with a manifest",
        description=__doc__.split("\n\n")[0],
    )
    import_parser.add_argument(
        "source", metavar="SRC", help="checkpoint directory, s3:// URI or hf://org/name[@revision]"
    )
    import_parser.add_argument("destination", metavar="DEST", help="where the copy goes (path or s3://)")
    import_parser.set_defaults(handler=import_command)


def import_command(args: argparse.Namespace) -> int:
    result = import_model(args.source, args.destination)
    print(result.summary())
    return 0
