"""How `llmft train` runs: in this process, under torchrun on this machine, or as a PyTorchJob.

`--launcher local` trains in this process (one device; under an outer torchrun, one rank);
`--launcher torchrun` starts torchrun here with one process per GPU (components/train/launch.py);
`--launcher pytorchjob` creates a Kubeflow PyTorchJob: the command line's train settings become
the job's TrainConfig, the options below choose its shape (nodes, GPUs, namespace, image, cluster
profile) and where its credentials come from (Kubernetes Secrets only).

`--dry-run` never trains, whatever the launcher: it prints the training plan
(components/train/plan.py) and, for a PyTorchJob, the job as YAML with the plan as comments
above it, so a costly run can be reviewed first (and the output piped to kubectl).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from components.defaults import DEFAULT_NAMESPACE
from components.train import distributed
from components.train.plan import Placement, TrainError, build_plan, cluster_placement, local_placement

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
        choices=["local", "torchrun", "pytorchjob"],
        default="local",
        help="local: train in this process; torchrun: one process per GPU of this machine; "
        "pytorchjob: create a Kubeflow PyTorchJob and wait for it",
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="print the training plan (devices, memory, steps, outputs; for pytorchjob also the job "
        "as YAML) and exit without training",
    )
    group.add_argument("--nodes", type=int, default=2, help="PyTorchJob pods, one per node (default 2)")
    group.add_argument(
        "--gpus-per-node",
        type=int,
        default=0,
        help="pytorchjob: GPUs per pod (default 0: all of the train profile's); "
        "torchrun: processes (default 0: one per visible GPU)",
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


def torchrun_processes(args: argparse.Namespace) -> int:
    """Processes `--launcher torchrun` starts: --gpus-per-node, else (0) one per visible GPU.

    A count above the visible GPUs is allowed here: on a CPU machine torchrun runs that many
    gloo processes (launch.processes_per_node, for pods, refuses it).
    """
    if args.gpus_per_node < 0:
        raise ValueError(f"--gpus-per-node {args.gpus_per_node}: use 0 (every visible GPU) or a count")
    if args.gpus_per_node:
        return args.gpus_per_node
    import torch

    visible = torch.cuda.device_count()
    if not visible:
        raise ValueError("--launcher torchrun: no GPU is visible; pass --gpus-per-node N for N CPU processes")
    return visible


def torchrun_function(args: argparse.Namespace) -> Callable[..., Any]:
    """The train function for `--launcher torchrun`, as tracking.run_step calls it."""
    from components.tracking import NULL_TRACKER, Tracker
    from components.train.launch import run_torchrun

    processes = torchrun_processes(args)

    def train_with_torchrun(config: Any, tracker: Tracker = NULL_TRACKER) -> Any:
        return run_torchrun(config, processes, tracker=tracker)

    return train_with_torchrun


def placement_from_args(args: argparse.Namespace, config: Any) -> Placement:
    """Where the launcher would put the training processes (a PyTorchJob's from its settings)."""
    if args.launcher == "pytorchjob":
        settings = settings_from_args(args, config)
        return cluster_placement(settings.nodes, settings.gpus_per_node, settings.profile.gpu_product)
    if args.launcher == "torchrun":
        return local_placement(config.device, "torchrun", torchrun_processes(args))
    return local_placement(config.device, "in-process", distributed.world_size())


def dry_run_command(args: argparse.Namespace, config: Any) -> int:
    """Print the plan (for pytorchjob: as comments above the job's YAML); 1 if it found problems."""
    if not distributed.is_main():
        return 0  # under an outer torchrun every rank runs this command: rank 0 speaks for all
    try:
        placement = placement_from_args(args, config)
        plan = build_plan(config, placement)
    except TrainError as error:  # the device asked for is not here
        placement = Placement(args.launcher, 1, 1, "cpu")
        plan = build_plan(config, placement)
        plan.problems.insert(0, str(error))
    if args.launcher != "pytorchjob":
        print(plan.text(), end="")
        return 1 if plan.problems else 0
    from components.train import pytorchjob

    job = pytorchjob.build_pytorchjob(settings_from_args(args, config))
    print("".join(f"# {line}\n" if line else "#\n" for line in plan.text().splitlines()), end="")
    print(pytorchjob.manifest_yaml(job), end="")
    return 1 if plan.problems else 0


def launcher_command(args: argparse.Namespace, config: BaseModel) -> int:
    from components.train import pytorchjob

    settings = settings_from_args(args, config)
    try:
        outcome = pytorchjob.launch(settings)
    except pytorchjob.PyTorchJobError:
        pytorchjob.cleanup(settings.name, settings.namespace, settings.cleanup)
        raise
    print(f"PyTorchJob {outcome.namespace}/{outcome.name}: {outcome.state} after {outcome.seconds:.0f} s")
    return 0
