"""Container image references: the one place the pipeline's images are set.

`containers/images.yaml` maps each image family (base, train, trtllm) to a full reference; it is written
by `containers/build.sh` after a push (``registry/repo:tag@sha256:...``). Components call
`image_for_step(step)` for their `base_image`, so every image in the compiled YAML comes from that file.

Compile-time override: point the environment variable ``LLMFT_IMAGES_FILE`` at another file before the
component modules are imported (their decorators resolve the image at import), or pass a path/`Images`
explicitly. A reference must be pinned: a digest or a tag other than "latest".

No KFP imports here.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.resources import STEPS
from components.yaml_errors import describe_yaml_error

logger = logging.getLogger(__name__)

ImageFamily = Literal["base", "train", "trtllm"]
IMAGE_FAMILIES: tuple[str, ...] = ("base", "train", "trtllm")
IMAGES_ENV_VAR = "LLMFT_IMAGES_FILE"
DEFAULT_IMAGES_FILE = Path(__file__).resolve().parents[1] / "containers" / "images.yaml"

# Which image each step's pods run (DESIGN.md, "Steps and their contracts").
STEP_IMAGE_FAMILY: dict[str, str] = {
    "curate": "base",
    "train": "train",
    "evaluate": "train",
    "export": "train",
    "build": "trtllm",
    "rollout": "base",
    "finalize": "base",
}

# Tags that float by convention. Only "latest" is refused outright (the rule); anything else is
# the publisher's promise, which is why build.sh writes digests.
MUTABLE_TAGS = frozenset({"latest"})
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPOSITORY_RE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


class ImagesConfigError(ValueError):
    """The images file is missing or unreadable, or holds an unpinned or malformed reference."""


def parse_image_reference(reference: str) -> tuple[str, str | None, str | None]:
    """Split ``[registry[:port]/]repo[:tag][@sha256:digest]`` into (name, tag, digest).

    Raises `ValueError` when the reference is malformed or not pinned (no tag and no digest, or the
    mutable tag "latest" without a digest).
    """
    if not reference or reference != reference.strip():
        raise ValueError(f"image reference {reference!r} is empty or has surrounding whitespace")
    name, _, digest = reference.partition("@")
    tag: str | None = None
    # A tag sits after the last "/", so a registry port ("host:5000/repo") is not mistaken for one.
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ValueError(f"image reference {reference!r} has an invalid tag {tag!r}")
    if digest and not _DIGEST_RE.match(digest):
        raise ValueError(
            f"image reference {reference!r} has an invalid digest {digest!r} (want sha256:<64 hex>)"
        )
    path = name.split("/", 1)[1] if "/" in name and _looks_like_registry(name.split("/", 1)[0]) else name
    if not _REPOSITORY_RE.match(path):
        raise ValueError(f"image reference {reference!r} has an invalid repository name {path!r}")
    if not digest and tag is None:
        raise ValueError(
            f"image reference {reference!r} is not pinned: add an immutable tag or an @sha256 digest"
        )
    if not digest and tag in MUTABLE_TAGS:
        raise ValueError(
            f"image reference {reference!r} uses the mutable tag {tag!r}: "
            "use a version tag or an @sha256 digest"
        )
    return name, tag, digest or None


def _looks_like_registry(component: str) -> bool:
    # Docker's rule: the first path component is a registry host if it has a dot or port, or is localhost.
    return "." in component or ":" in component or component == "localhost"


class Images(BaseModel):
    """Full image reference per image family."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base: str = Field(description="python slim + llmft[base]: curate, rollout, finalize, CLI.")
    train: str = Field(description="CUDA PyTorch + llmft[train]: train, evaluate, export.")
    trtllm: str = Field(description="tritonserver trtllm-python + llmft[trtllm]: build.")

    @field_validator("base", "train", "trtllm")
    @classmethod
    def _check_reference(cls, value: str) -> str:
        parse_image_reference(value)
        return value

    def for_family(self, family: str) -> str:
        """The reference of image `family` (base, train or trtllm)."""
        if family not in IMAGE_FAMILIES:
            raise KeyError(f"unknown image family {family!r}; families are {', '.join(IMAGE_FAMILIES)}")
        reference: str = getattr(self, family)
        return reference

    def for_step(self, step: str) -> str:
        """The reference of the image step `step` runs (see `STEP_IMAGE_FAMILY`)."""
        if step not in STEP_IMAGE_FAMILY:
            raise KeyError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
        return self.for_family(STEP_IMAGE_FAMILY[step])


def images_file(path: str | Path | None = None) -> Path:
    """The images file in effect: `path`, else $LLMFT_IMAGES_FILE, else containers/images.yaml."""
    if path is not None:
        return Path(path)
    from_env = os.environ.get(IMAGES_ENV_VAR)
    return Path(from_env) if from_env else DEFAULT_IMAGES_FILE


def load_images(path: str | Path | None = None) -> Images:
    """Read and validate the images file (see `images_file` for which one)."""
    source = images_file(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as err:
        raise ImagesConfigError(
            f"{source}: cannot read the image references file ({err.strerror or err}); "
            f"set {IMAGES_ENV_VAR} to its path"
        ) from None
    except UnicodeDecodeError as err:
        raise ImagesConfigError(
            f"{source}: not a text file (byte {err.start} is not UTF-8): expected YAML"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ImagesConfigError(f"{source}: {describe_yaml_error(err)}") from None
    if not isinstance(data, dict):
        raise ImagesConfigError(f"{source}: expected a mapping of image family to reference")
    try:
        images = Images.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '<file>'}: {error['msg']}"
            for error in err.errors()
        )
        raise ImagesConfigError(f"{source}: {problems}") from None
    logger.debug("image references from %s: %s", source, images.model_dump())
    return images


def image_for_step(step: str, images: Images | None = None) -> str:
    """The image reference step `step` runs; reads the images file unless `images` is given."""
    resolved = images if images is not None else load_images()
    return resolved.for_step(step)
