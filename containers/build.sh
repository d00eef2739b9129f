#!/usr/bin/env bash
# Build, tag and push llmft's images, then pin them by digest in containers/images.yaml, the one file
# compile.py reads image references from.
#
#   REGISTRY=123456789012.dkr.ecr.us-east-1.amazonaws.com/llmft containers/build.sh [options] [family...]
#
# families: base train trtllm (default: all three)
# options:
#   --dry-run          print the commands and the images.yaml lines; run nothing, change nothing
#   --platform P       target platform (default: linux/amd64, what p4d/p5 and most EKS nodes run)
#   --images-file F    file to rewrite (default: containers/images.yaml)
#   -h, --help         this text
#
# Tags are <pyproject version>-<git short sha>, with "-dirty" when the work tree has uncommitted
# changes. Each image is pushed as $REGISTRY/llmft-<family>:<tag> and written to the images file as
# $REGISTRY/llmft-<family>:<tag>@sha256:<digest>, so a re-pushed tag cannot change what runs.
# Needs docker with buildx, logged in to $REGISTRY (e.g. `aws ecr get-login-password | docker login ...`).
set -euo pipefail

ALL_FAMILIES=(base train trtllm)
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
images_file="$repo_root/containers/images.yaml"
platform="linux/amd64"
dry_run=0
families=()

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --platform) [[ $# -ge 2 ]] || die "--platform needs a value"; platform="$2"; shift ;;
    --images-file) [[ $# -ge 2 ]] || die "--images-file needs a value"; images_file="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [[ " ${ALL_FAMILIES[*]} " == *" $1 "* ]] || die "unknown image family '$1' (families: ${ALL_FAMILIES[*]})"
      families+=("$1") ;;
  esac
  shift
done
[[ ${#families[@]} -gt 0 ]] || families=("${ALL_FAMILIES[@]}")

registry="${REGISTRY:-}"
[[ -n "$registry" ]] || die "set REGISTRY to the registry and namespace to push to, e.g. ghcr.io/my-org"
registry="${registry%/}"

version="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$repo_root/pyproject.toml" | head -n 1)"
[[ -n "$version" ]] || die "no version found in $repo_root/pyproject.toml"
if sha="$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null)"; then
  # An image built from uncommitted files must not claim to be that commit.
  [[ -z "$(git -C "$repo_root" status --porcelain 2>/dev/null)" ]] || sha="${sha}-dirty"
else
  sha="nogit"
fi
tag="${version}-${sha}"

# Print a command, shell-quoted, then run it unless this is a dry run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [[ "$dry_run" -eq 1 ]] || "$@"
}

# Replace (or append) the "<family>: <reference>" line of the images file.
pin() {
  local family="$1" reference="$2"
  if [[ "$dry_run" -eq 1 ]]; then
    echo "would write to $images_file: $family: $reference"
    return
  fi
  if grep -q "^${family}:" "$images_file"; then
    # -i.bak works with both GNU and BSD sed; '|' cannot occur in an image reference.
    sed -i.bak "s|^${family}:.*\$|${family}: ${reference}|" "$images_file"
    rm -f "$images_file.bak"
  else
    echo "${family}: ${reference}" >> "$images_file"
  fi
  echo "pinned $family: $reference"
}

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

for family in "${families[@]}"; do
  dockerfile="$repo_root/containers/$family/Dockerfile"
  [[ -f "$dockerfile" ]] || die "missing $dockerfile"
  ref="$registry/llmft-$family:$tag"
  metadata="$workdir/$family-metadata.json"
  echo "== $family: $ref"
  # --metadata-file records the digest of the pushed manifest: no second registry round-trip needed.
  run docker buildx build \
    --platform "$platform" \
    --file "$dockerfile" \
    --tag "$ref" \
    --push \
    --metadata-file "$metadata" \
    "$repo_root"
  if [[ "$dry_run" -eq 1 ]]; then
    digest="sha256:<digest of the pushed image>"
  else
    digest="$(sed -n 's/.*"containerimage\.digest": *"\(sha256:[0-9a-f]\{64\}\)".*/\1/p' "$metadata" | head -n 1)"
    [[ -n "$digest" ]] || die "no containerimage.digest in buildx metadata for $family ($metadata)"
  fi
  pin "$family" "$ref@$digest"
done

if [[ "$dry_run" -eq 1 ]]; then
  echo "dry run: nothing was built, pushed or written"
else
  echo "images pinned in $images_file; recompile with: python compile.py"
fi
