"""`llmft train --launcher pytorchjob`: run the train step as a PyTorchJob on a cluster.

The command line's train settings become the job's TrainConfig; the launcher options below
choose the job's shape (nodes, GPUs, namespace, image, cluster profile) and where its
credentials come from (Kubernetes Secrets only). `--dry-run` prints the PyTorchJob as
YAML without contacting a cluster, so a costly run can be reviewed first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from pydantic import BaseModel

from components.defaults import DEFAULT_NAMESPACE

# argparse destinations of the options below: not TrainConfig settings.
LAUNCHER_OPTIONS = frozenset(
    {
        "launcher",
        "dry_run",
        "nodes",
        "gpus_per_node",
        "namespace",
        "image",
        "preset",
        "profiles",
        "job_name",
        "secret_env",
        "env_from_secret",
        "env",
        "timeout_s",
        "cleanup",
    }
)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--launcher",
        choices=["local", "pytorchjob"],
        default="local",
        help="local: train in this process (torchrun for several GPUs); "
        "pytorchjob: create a Kubeflow PyTorchJob and wait for it",
    )
    group.add_argument("--dry-run", action="store_true", help="print the PyTorchJob as YAML and exit")
    group.add_argument("--nodes", type=int, default=2, help="PyTorchJob pods, one per node (default 2)")
    group.add_argument(
        "--gpus-per-node", type=int, default=0, help="GPUs per pod (default 0: all of the train profile's)"
    )
    group.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help=f"namespace of the job (default {DEFAULT_NAMESPACE})"
    )
    group.add_argument("--image", default=None, help="train image (default: containers/images.yaml)")
    group.add_argument("--preset", default="p5", help="cluster preset for the pods: p5, p4d, p4de, cpu")
    group.add_argument(
        "--profiles", default=None, help="YAML file overriding the preset (compile.py's format)"
    )
    group.add_argument(
        "--job-name",
        default=None,
        help="PyTorchJob name (default: derived from the settings, so a rerun re-attaches)",
    )
    group.add_argument(
        "--secret-env",
        action="append",
        default=[],
        metavar="VAR=SECRET:KEY",
        help="environment variable from a Secret key, e.g. HF_TOKEN=hf:token (repeatable)",
    )
    group.add_argument(
        "--env-from-secret",
        action="append",
        default=[],
        metavar="SECRET",
        help="all keys of a Secret as environment variables (repeatable)",
    )
    group.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="plain environment variable, never a credential (repeatable)",
    )
    group.add_argument(
        "--timeout-s", type=float, default=7 * 24 * 3600, help="how long to wait (default 7 days)"
    )
    group.add_argument(
        "--cleanup",
        choices=["keep", "delete"],
        default="keep",
        help="what to do with a job that failed or timed out",
    )


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, separator, rest = value.partition("=")
        if not separator or not name:
            raise ValueError(f"{option} {value!r}: expected NAME=VALUE")
        pairs[name] = rest
    return pairs


def settings_from_args(args: argparse.Namespace, config: BaseModel) -> Any:
    """The PyTorchJobSettings for this command line (a pure mapping, no cluster access)."""
    from components.images import load_images
    from components.resources import load_profiles
    from components.train.launch import gpus_used
    from components.train.pytorchjob import PyTorchJobSettings, SecretEnv, job_name

    profile = load_profiles(args.profiles, preset=args.preset).train
    gpus = gpus_used(profile, args.gpus_per_node)
    profile = profile.model_copy(update={"gpus": gpus})
    secret_env = []
    for name, reference in _pairs(args.secret_env, "--secret-env").items():
        secret, separator, key = reference.partition(":")
        if not separator:
            raise ValueError(f"--secret-env {name}={reference!r}: expected VAR=SECRET:KEY")
        secret_env.append(SecretEnv(name=name, secret=secret, key=key))
    train_config = config.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(train_config, sort_keys=True).encode()).hexdigest()[:12]
    return PyTorchJobSettings(
        name=args.job_name or job_name(f"cli-{digest}", "train"),
        namespace=args.namespace,
        image=args.image or load_images().for_step("train"),
        nodes=args.nodes,
        gpus_per_node=gpus,
        profile=profile,
        train_config=train_config,
        secret_env=secret_env,
        env_from_secrets=args.env_from_secret,
        extra_env=_pairs(args.env, "--env"),
        timeout_s=args.timeout_s,
        cleanup=args.cleanup,
    )


def launcher_command(args: argparse.Namespace, config: BaseModel) -> int:
    from components.train import pytorchjob

    settings = settings_from_args(args, config)
    job = pytorchjob.build_pytorchjob(settings)
    if args.dry_run:
        print(pytorchjob.manifest_yaml(job), end="")
        return 0
    try:
        outcome = pytorchjob.launch(settings)
    except pytorchjob.PyTorchJobError:
        pytorchjob.cleanup(settings.name, settings.namespace, settings.cleanup)
        raise
    print(f"PyTorchJob {outcome.namespace}/{outcome.name}: {outcome.state} after {outcome.seconds:.0f} s")
    return 0
