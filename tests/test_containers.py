"""Images: the Dockerfiles, containers/images.yaml, components/images.py and containers/build.sh.

No Docker engine runs here, so this checks what can be checked without one: each Dockerfile installs an
extra that pyproject.toml defines, from a pinned base, as a non-root user; every image reference comes
from the one images file; build.sh's dry run prints the builds and its digest pinning rewrites the file.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from components.images import (
    DEFAULT_IMAGES_FILE,
    IMAGE_FAMILIES,
    IMAGES_ENV_VAR,
    STEP_IMAGE_FAMILY,
    Images,
    ImagesConfigError,
    image_for_step,
    load_images,
    parse_image_reference,
)
from components.resources import STEPS, preset_profiles

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
BUILD_SH = CONTAINERS / "build.sh"
DIGEST = "sha256:" + "ab" * 32
FAMILY_EXTRA = {"base": "base", "train": "train,gpu", "trtllm": "trtllm"}


def dockerfile(family: str) -> str:
    return (CONTAINERS / family / "Dockerfile").read_text(encoding="utf-8")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def base_image(text: str) -> str:
    """The final FROM's image, with ${ARG}s replaced by their defaults."""
    args = {}
    image = ""
    for keyword, rest in instructions(text):
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            image = rest.split()[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)


# --- Dockerfiles ------------------------------------------------------------------------------------------


def test_one_dockerfile_per_image_family() -> None:
    found = sorted(path.parent.name for path in CONTAINERS.glob("*/Dockerfile"))
    assert found == sorted(IMAGE_FAMILIES)


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_dockerfile_installs_its_extra_with_the_test_constraints(family: str) -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    runs = [
        rest
        for keyword, rest in instructions(dockerfile(family))
        if keyword == "RUN" and "pip install" in rest and '".[' in rest
    ]
    assert len(runs) == 1, "one pip install of llmft per image"
    installed = re.findall(r'"\.\[([A-Za-z0-9_,-]+)\]"', runs[0])
    assert installed == [FAMILY_EXTRA[family]]
    for extra in installed[0].split(","):
        assert extra in extras, f"{family}: extra {extra!r} is not in pyproject.toml"
    assert "-c constraints.txt" in runs[0] and "--no-cache-dir" in runs[0]


def test_train_image_gives_nemo_automodel_its_own_environment() -> None:
    from components.train.nemo_backend import NEMO_PYTHON_ENV

    steps = instructions(dockerfile("train"))
    nemo_runs = [rest for keyword, rest in steps if keyword == "RUN" and "nemo-automodel" in rest]
    assert len(nemo_runs) == 1 and "/opt/nemo/bin/pip install" in nemo_runs[0]
    assert any(
        keyword == "ENV" and rest.startswith(f"{NEMO_PYTHON_ENV}=/opt/nemo/bin/python")
        for keyword, rest in steps
    )


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_dockerfile_base_image_is_pinned(family: str) -> None:
    image = base_image(dockerfile(family))
    _, tag, digest = parse_image_reference(image)  # raises for :latest or an untagged image
    assert digest or re.search(r"\d", tag or ""), f"{family}: base image {image} has no version in its tag"


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_dockerfile_runs_as_non_root(family: str) -> None:
    users = [rest for keyword, rest in instructions(dockerfile(family)) if keyword == "USER"]
    assert users, f"{family}: no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{family}: runs as {users[-1]}"
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit()


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_dockerfile_context_is_an_allowlist(family: str) -> None:
    ignore = (CONTAINERS / family / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*") :][:1] == ["*"]  # everything excluded unless listed
    for keyword, rest in instructions(dockerfile(family)):
        if keyword == "COPY":
            for source in rest.split()[:-1]:
                assert f"!{source}" in ignore or f"!{source}/" in ignore, (
                    f"{family}: {source} is not in the context"
                )


# --- images.yaml and components/images.py ------------------------------------------------------------------


def test_images_file_holds_a_pinned_reference_per_family() -> None:
    raw = yaml.safe_load(DEFAULT_IMAGES_FILE.read_text(encoding="utf-8"))
    assert sorted(raw) == sorted(IMAGE_FAMILIES)
    images = load_images(DEFAULT_IMAGES_FILE)
    for family in IMAGE_FAMILIES:
        name, _, _ = parse_image_reference(images.for_family(family))
        assert name.endswith(f"/llmft-{family}")  # the names build.sh pushes


def test_every_step_has_an_image_family() -> None:
    assert set(STEP_IMAGE_FAMILY) == set(STEPS)
    assert set(STEP_IMAGE_FAMILY.values()) == set(IMAGE_FAMILIES)
    images = load_images()
    assert image_for_step("curate", images) == images.base
    assert image_for_step("train") == images.train
    assert image_for_step("export") == images.train
    assert image_for_step("build") == images.trtllm
    with pytest.raises(KeyError, match="unknown step"):
        image_for_step("deploy")


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("ghcr.io/llmft/llmft-base:0.1.0", ("ghcr.io/llmft/llmft-base", "0.1.0", None)),
        (f"ghcr.io/llmft/llmft-base@{DIGEST}", ("ghcr.io/llmft/llmft-base", None, DIGEST)),
        (f"ghcr.io/llmft/llmft-base:0.1.0-abc@{DIGEST}", ("ghcr.io/llmft/llmft-base", "0.1.0-abc", DIGEST)),
        ("localhost:5000/llmft-base:1", ("localhost:5000/llmft-base", "1", None)),
        ("python:3.11.13-slim-bookworm", ("python", "3.11.13-slim-bookworm", None)),
        (f"example.com/x:latest@{DIGEST}", ("example.com/x", "latest", DIGEST)),  # the digest pins it
    ],
)
def test_parse_image_reference_accepts_pinned(
    reference: str, expected: tuple[str, str | None, str | None]
) -> None:
    assert parse_image_reference(reference) == expected


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("ghcr.io/llmft/llmft-base", "not pinned"),
        ("localhost:5000/llmft-base", "not pinned"),
        ("ghcr.io/llmft/llmft-base:latest", "mutable tag 'latest'"),
        ("ghcr.io/llmft/llmft-base@sha256:1234", "invalid digest"),
        ("ghcr.io/LLMFT/base:1", "invalid repository"),
        (" ghcr.io/llmft/llmft-base:1", "whitespace"),
    ],
)
def test_parse_image_reference_rejects_unpinned(reference: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_image_reference(reference)


def test_load_images_env_override_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    override = tmp_path / "images.yaml"
    override.write_text(
        "base: registry.example.com/b:1\n"
        "train: registry.example.com/t:1\n"
        f"trtllm: registry.example.com/r@{DIGEST}\n"
    )
    monkeypatch.setenv(IMAGES_ENV_VAR, str(override))
    assert load_images().trtllm == f"registry.example.com/r@{DIGEST}"
    assert image_for_step("rollout") == "registry.example.com/b:1"

    override.write_text("base: registry.example.com/b:latest\ntrain: t:1\ntrtllm: r:1\n")
    with pytest.raises(ImagesConfigError) as err:
        load_images()
    assert str(override) in str(err.value) and "base" in str(err.value) and "latest" in str(err.value)

    override.write_text("base: b:1\ntrain: t:1\n")
    with pytest.raises(ImagesConfigError, match="trtllm"):
        load_images()
    override.write_text("base: b:1\ntrain: t:1\ntrtllm: r:1\nserve: s:1\n")
    with pytest.raises(ImagesConfigError, match="serve"):
        load_images()
    with pytest.raises(ImagesConfigError, match="cannot read"):
        load_images(tmp_path / "absent.yaml")


def test_no_image_reference_is_written_in_code() -> None:
    """Components and pipelines take images from components.images, never from a string literal."""
    offenders = []
    for path in sorted([*(REPO / "components").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            is_image_kwarg = isinstance(node, ast.keyword) and node.arg in ("base_image", "target_image")
            if is_image_kwarg and isinstance(node.value, ast.Constant):
                offenders.append(
                    f"{path.relative_to(REPO)}:{node.value.lineno} {node.arg}={node.value.value!r}"
                )
            is_setter = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "set_container_image"
            )
            if is_setter and node.args and isinstance(node.args[0], ast.Constant):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} set_container_image literal")
    assert not offenders, "hard-coded images: " + ", ".join(offenders)


def test_compiled_pipeline_images_come_from_the_images_file(tmp_path: Path) -> None:
    """Every image in the compiled llm_finetune YAML is one of the Images it was built with."""
    from kfp import compiler

    from pipelines.llm_finetune import build_pipeline

    images = Images(
        base=f"registry.example.com/custom-base:9@{DIGEST}",
        train="registry.example.com/custom-train:9",
        trtllm="registry.example.com/custom-trtllm:9",
    )
    output = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(preset_profiles("p5"), images), str(output))
    spec = next(yaml.safe_load_all(output.read_text(encoding="utf-8")))
    used = {
        executor["container"]["image"]
        for executor in spec["deploymentSpec"]["executors"].values()
        if "container" in executor
    }
    assert used, "no container executors compiled"
    assert used <= set(images.model_dump().values()), used


# --- build.sh ----------------------------------------------------------------------------------------------


def fake_docker(bin_dir: Path, log: Path) -> None:
    """A `docker` that logs its arguments and writes buildx metadata with a digest, as buildx does."""
    script = bin_dir / "docker"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{log}"\n'
        "while [[ $# -gt 0 ]]; do\n"
        '  if [[ "$1" == --metadata-file ]]; then\n'
        f'    printf \'{{\\n  "containerimage.digest": "{DIGEST}",\\n  "image.name": "x"\\n}}\\n\' > "$2"\n'
        "  fi\n"
        "  shift\n"
        "done\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def run_build(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "docker.log"
    fake_docker(bin_dir, log)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "REGISTRY": "registry.example.com/ml/",
    }
    result = subprocess.run(
        ["bash", str(BUILD_SH), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    return result, log


def test_build_dry_run_prints_builds_and_runs_nothing(tmp_path: Path) -> None:
    before = DEFAULT_IMAGES_FILE.read_bytes()
    result, docker_log = run_build(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not docker_log.exists(), "the dry run called docker"
    assert DEFAULT_IMAGES_FILE.read_bytes() == before
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for family in IMAGE_FAMILIES:
        commands = [line for line in result.stdout.splitlines() if line.startswith("+ docker buildx build")]
        command = next(line for line in commands if f"containers/{family}/Dockerfile" in line)
        assert f"--tag registry.example.com/ml/llmft-{family}:{version}-" in command
        assert "--push" in command and "--metadata-file" in command
        assert (
            f"would write to {DEFAULT_IMAGES_FILE}: {family}: registry.example.com/ml/llmft-{family}:"
            in result.stdout
        )


def test_build_pins_pushed_digests_in_the_images_file(tmp_path: Path) -> None:
    images_file = tmp_path / "images.yaml"
    shutil.copy(DEFAULT_IMAGES_FILE, images_file)
    result, docker_log = run_build(tmp_path, "--images-file", str(images_file), "train")
    assert result.returncode == 0, result.stderr
    assert docker_log.read_text().count("buildx build") == 1
    images = load_images(images_file)
    name, tag, digest = parse_image_reference(images.train)
    assert name == "registry.example.com/ml/llmft-train" and digest == DIGEST and tag
    # Families that were not built keep their references; the header comment survives.
    default = load_images(DEFAULT_IMAGES_FILE)
    assert (images.base, images.trtllm) == (default.base, default.trtllm)
    assert images_file.read_text().startswith("#")


def test_build_rejects_bad_input(tmp_path: Path) -> None:
    result, _ = run_build(tmp_path, "--dry-run", "serve")
    assert result.returncode != 0 and "unknown image family 'serve'" in result.stderr
    env = {key: value for key, value in os.environ.items() if key != "REGISTRY"}
    result = subprocess.run(
        ["bash", str(BUILD_SH), "--dry-run"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode != 0 and "REGISTRY" in result.stderr


def test_trtllm_image_is_the_serving_compat_default() -> None:
    """Engines are tied to the TRT-LLM version of the image that builds them: the trtllm image's
    base and the version table's default release must be the same Triton release."""
    from components.serving_compat import DEFAULT_TRITON_IMAGE

    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile("trtllm"), re.MULTILINE)
    assert base is not None and base.group(1) == DEFAULT_TRITON_IMAGE
