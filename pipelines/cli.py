"""The `llmft` command line.

Step subcommands (`llmft curate|train|evaluate|export|build|rollout`) are generated from
each step's typed config: every field becomes a `--flag` with the field's description as
help, and `--config file.yaml` supplies any of them (flags win). They call the very
function the KFP component calls. `llmft local` runs the whole pipeline under kfp.local;
`llmft submit` / `llmft schedule` talk to a Kubeflow Pipelines endpoint; `llmft model import`
copies a model to a checked, pinned place.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import signal
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from components import jsonout
from components.defaults import DEFAULT_EXPERIMENT
from components.images import ImagesConfigError
from components.redact import describe_validation_error, install_log_redaction, redact
from components.yaml_errors import describe_yaml_error

log = logging.getLogger("llmft")


# Subcommand -> (module, config class, step function, one-line help). Modules are imported
# only for the command that runs: torch, transformers and tritonclient are slow or absent.
STEPS = {
    "curate": (
        "components.curate.curate",
        "CurateConfig",
        "curate",
        "validate, normalise, deduplicate and split instruction data",
    ),
    "train": (
        "components.train.train",
        "TrainConfig",
        "train",
        "LoRA fine-tune a base model on curated data",
    ),
    "evaluate": (
        "components.evaluate.evaluate",
        "EvaluateConfig",
        "evaluate",
        "score base vs tuned model and decide the gate",
    ),
    "export": (
        "components.export.export",
        "ExportConfig",
        "export",
        "merge the adapter into the base model (HF safetensors)",
    ),
    "build": (
        "components.build.build",
        "BuildConfig",
        "build",
        "write a Triton model repository for a serving mode",
    ),
    "rollout": (
        "components.rollout.rollout",
        "RolloutConfig",
        "rollout",
        "serve a model repository and smoke-test it",
    ),
}
STEP_COMMANDS = tuple(STEPS)
# Namespace keys of a step command that are not config settings (see _add_step_parser).
_FLAG_SPELLINGS = "flag_spellings"


def package_version() -> str:
    try:
        return importlib.metadata.version("llmft")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (llmft is not installed; run from a source tree)"


def _load_step(name: str) -> tuple[type[BaseModel], Callable[..., BaseModel]]:
    module_name, config_name, function_name, _ = STEPS[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, function_name)


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-").replace(".", "-")


def _add_config_fields(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    """One flag per config field (nested models get dotted names: --lora-r, --gate-max-val-loss)."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if _is_model(annotation):
            _add_config_fields(parser, annotation, f"{prefix}{name}.")
            continue
        options: dict[str, Any] = {"dest": f"{prefix}{name}", "default": argparse.SUPPRESS}
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif _is_list(annotation):
            # Repeatable: "--inputs a b --inputs c" is [a, b, c]; with "store" the last would win.
            options["action"] = "extend"
            options["nargs"] = "+"
        elif isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is dict:
            options["type"] = yaml.safe_load if typing.get_origin(annotation) is dict else str
        default = (
            "required" if field.is_required() else f"default: {field.get_default(call_default_factory=True)}"
        )
        # argparse formats help with %: a literal one in a description ("80%") must be doubled.
        options["help"] = f"{field.description or ''} ({default})".replace("%", "%%")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        # Other spellings a config gives a flag (curate's --input and --eval).
        aliases = [str(alias) for alias in extra.get("cli_aliases", ())]
        parser.add_argument(_flag(f"{prefix}{name}"), *aliases, **options)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return nested


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def _read_settings(text: str, source: str) -> dict[str, Any]:
    try:
        settings = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise SystemExit(f"llmft: {source}: {describe_yaml_error(error)}") from None
    if not isinstance(settings, dict):
        raise SystemExit(f"llmft: {source} must hold a mapping of settings")
    return settings


def load_step_config(
    model: type[BaseModel],
    config_file: str | None,
    flags: dict[str, Any],
    config_env: str | None = None,
    typed_flags: dict[str, str] | None = None,
) -> BaseModel:
    """Build a step config from a YAML file or an environment variable, then flags (flags win).

    `config_env` names a variable holding the settings as YAML or JSON: launchers pass a
    whole config to torchrun workers and PyTorchJob pods that way. An invalid setting is
    named the way the user gave it: the flag as typed (`typed_flags`: field -> `--input`),
    else the key in the --config file or the variable. Values are never shown: some are secret.
    """
    file_settings: dict[str, Any] = {}
    env_settings: dict[str, Any] = {}
    if config_file:
        try:
            text = Path(config_file).read_text(encoding="utf-8")
        except OSError as error:
            reason = error.strerror or error
            raise SystemExit(f"llmft: cannot read --config {config_file}: {reason}") from None
        except UnicodeDecodeError as error:
            raise SystemExit(
                f"llmft: --config {config_file}: not a text file (byte {error.start} is not UTF-8)"
            ) from None
        file_settings = _read_settings(text, f"--config {config_file}")
    if config_env:
        if config_env not in os.environ:
            raise SystemExit(f"llmft: --config-env {config_env}: the environment variable is not set")
        env_settings = _read_settings(os.environ[config_env], f"${config_env}")
    try:
        return model.model_validate(_merge(_merge(file_settings, env_settings), _nest(flags)))
    except ValidationError as error:
        sources = _SettingSources(
            flags, typed_flags or {}, config_file, file_settings, config_env, env_settings
        )
        problems = "; ".join(
            f"{sources.name(e['loc'], e['type'])}: {redact(e['msg'].removeprefix('Value error, '))}"
            for e in error.errors(include_input=False)
        )
        raise SystemExit(f"llmft: invalid settings: {problems}") from None


class _SettingSources:
    """Names a config field the way the user gave it: flag, --config key or environment key."""

    def __init__(
        self,
        flags: dict[str, Any],
        typed_flags: dict[str, str],
        config_file: str | None,
        file_settings: dict[str, Any],
        config_env: str | None,
        env_settings: dict[str, Any],
    ) -> None:
        self.flags, self.typed_flags = flags, typed_flags
        self.config_file, self.file_settings = config_file, file_settings
        self.config_env, self.env_settings = config_env, env_settings

    def name(self, loc: tuple[Any, ...], error_type: str) -> str:
        path = [str(part) for part in loc]
        # The flag (or key) covering the longest part of the location: "inputs" for inputs.1.
        for end in range(len(path), 0, -1):
            dotted = ".".join(path[:end])
            item = f" (item {int(path[end]) + 1})" if end < len(path) and path[end].isdigit() else ""
            if dotted in self.flags:
                return self.typed_flags.get(dotted, _flag(dotted)) + item
            if self.config_env and _lookup(self.env_settings, path[:end]):
                return f"{dotted}{item} in ${self.config_env}"
            if self.config_file and _lookup(self.file_settings, path[:end]):
                return f"{dotted}{item} in --config {self.config_file}"
        dotted = ".".join(path)
        if error_type == "missing":
            return f"{_flag(dotted)} (or {dotted} in a --config file)"
        return dotted


def _lookup(settings: dict[str, Any], path: list[str]) -> bool:
    """True when the nested mapping `settings` holds a key at `path`."""
    target: Any = settings
    for part in path:
        if not isinstance(target, dict) or part not in target:
            return False
        target = target[part]
    return True


def typed_spellings(argv: list[str], spellings: dict[str, list[str]]) -> dict[str, str]:
    """For each field given as a flag, the spelling the user typed (argparse keeps only the field).

    `spellings` maps fields to their option strings; an unambiguous prefix (argparse accepts
    `--learning` for `--learning-rate`) counts as typed.
    """
    typed: dict[str, str] = {}
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        exact = [dest for dest, options in spellings.items() if name in options]
        prefixed = [dest for dest, options in spellings.items() if any(o.startswith(name) for o in options)]
        matches = exact or (prefixed if len(prefixed) == 1 else [])
        for dest in matches:
            typed[dest] = name
    return typed


def _run_step_command(name: str, args: argparse.Namespace, argv: list[str]) -> int:
    from components import tracking

    config_type, function = _load_step(name)
    not_settings = {
        "command",
        "config",
        "config_env",
        "mlflow_tracking_uri",
        "mlflow_experiment",
        "verbose",
        "json",
    }
    if name == "train":
        from pipelines import train_launcher

        not_settings |= train_launcher.LAUNCHER_OPTIONS
    not_settings.add(_FLAG_SPELLINGS)
    flags = {key: value for key, value in vars(args).items() if key not in not_settings}
    typed = typed_spellings(argv, getattr(args, _FLAG_SPELLINGS))
    config = load_step_config(config_type, args.config, flags, args.config_env, typed)
    if name == "train":
        # A dry run never trains, whatever the launcher: it prints the plan and stops.
        if args.dry_run:
            return train_launcher.dry_run_command(args, config)
        if args.launcher == "pytorchjob":
            return train_launcher.launcher_command(args, config)
        if args.launcher == "torchrun":
            function = train_launcher.torchrun_function(args)
    # Under torchrun every rank runs this command; only rank 0 opens an MLflow run and reports.
    is_rank_zero = os.environ.get("RANK", "0") == "0"
    uri = tracking.resolve_tracking_uri(args.mlflow_tracking_uri) if is_rank_zero else None
    result, run_id = tracking.run_step(name, function, config, uri, args.mlflow_experiment)
    if not is_rank_zero:
        return 0
    print(result.summary())
    if run_id:
        print(f"MLflow run: {run_id} ({redact(uri)})")
    if args.json:
        print(jsonout.dumps(result.model_dump(mode="json"), indent=2))
    return 0


def _add_step_parser(commands: Any, name: str) -> None:
    from components import tracking

    config_type, _ = _load_step(name)
    help_text = STEPS[name][3]
    step_parser = commands.add_parser(name, help=help_text)
    step_parser.add_argument("--config", help="YAML file with any of the settings below (flags win)")
    step_parser.add_argument(
        "--config-env", metavar="VAR", help="environment variable holding settings as YAML or JSON"
    )
    step_parser.add_argument(
        "--mlflow-tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else off); " + tracking.WAIT_HELP,
    )
    step_parser.add_argument(
        "--mlflow-experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})",
    )
    step_parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    if name == "train":
        from pipelines import train_launcher

        train_launcher.add_arguments(step_parser.add_argument_group("launcher (multi-node training)"))
    _add_config_fields(step_parser, config_type)
    spellings = {
        action.dest: list(action.option_strings)
        for action in step_parser._actions
        if action.option_strings and action.dest != "help"
    }
    step_parser.set_defaults(**{_FLAG_SPELLINGS: spellings})


def build_parser(step: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or only one step's subcommand (which then needs neither kfp nor the other steps)."""
    parser = argparse.ArgumentParser(prog="llmft", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    if step:
        _add_step_parser(commands, step)
        return parser

    from pipelines import client, compile_pipeline, local, model_import

    local_parser = commands.add_parser("local", help="run the whole pipeline on this machine under kfp.local")
    local.add_arguments(local_parser)
    local_parser.set_defaults(handler=local.local_command)

    compile_parser = commands.add_parser("compile", help="compile the pipeline to YAML (same as compile.py)")
    compile_pipeline.add_arguments(compile_parser)
    compile_parser.set_defaults(handler=compile_pipeline.compile_command)

    submit_parser = commands.add_parser("submit", help="start a run on a Kubeflow Pipelines endpoint")
    client.add_submit_arguments(submit_parser)
    submit_parser.set_defaults(handler=client.submit_command)
    schedule_parser = commands.add_parser("schedule", help="create a recurring run on Kubeflow Pipelines")
    client.add_schedule_arguments(schedule_parser)
    schedule_parser.set_defaults(handler=client.schedule_command)

    model_parser = commands.add_parser("model", help="bring your own model: `llmft model import SRC DEST`")
    model_import.add_arguments(model_parser)

    for name in STEP_COMMANDS:
        _add_step_parser(commands, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A step command builds only its own parser: a torchrun worker or a pod then imports
    # that step's code, not kfp and every other step.
    step = argv[0] if argv and argv[0] in STEP_COMMANDS else None
    try:
        parser = build_parser(step)
    except ImagesConfigError as error:
        # The pipeline's component modules resolve their images (LLMFT_IMAGES_FILE) when imported.
        print(f"llmft: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        # "Found credentials in environment variables" on every S3 access is noise, not news.
        for chatty in ("botocore", "boto3", "s3transfer"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    # URIs in log lines (ours, MLflow's, kfp's, urllib3's) may carry a password or a signature.
    install_log_redaction()
    try:
        if args.command in STEP_COMMANDS:
            return _run_step_command(args.command, args, argv)
        return int(args.handler(args))
    except ValidationError as error:
        # pydantic's own rendering (and so a traceback) repeats each refused value: not even with -v.
        print(
            f"llmft {args.command}: error: invalid settings: {describe_validation_error(error)}",
            file=sys.stderr,
        )
        return 1
    except (ValueError, RuntimeError, OSError) as error:
        # Our errors carry the file, field or value at fault (an OSError its path: a symlink loop,
        # a device, a missing or unreadable file); a traceback adds nothing for users.
        log.debug("failure", exc_info=True)
        print(f"llmft {args.command}: error: {redact(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a fault: one line, and the shell's status for SIGINT.
        # Every step cleans up on the way out (its `finally` blocks ran before this).
        log.debug("interrupted", exc_info=True)
        print(f"llmft {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
