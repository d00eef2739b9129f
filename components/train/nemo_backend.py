"""The `nemo` backend: LoRA SFT through NVIDIA NeMo AutoModel (pip `nemo-automodel`).

NeMo AutoModel is the NeMo framework's current path for fine-tuning Hugging Face models:
nemo-toolkit 3.x ships only speech and audio collections (its LLM collections and the
NeMo 2.0 recipes are legacy, replaced by AutoModel and Megatron-Bridge). This module maps
our TrainConfig onto AutoModel's fine-tuning recipe (`recipe_config`, the one typed
place where the two meet), runs the recipe, and publishes the adapter it writes, which is
already in Hugging Face PEFT format, as `<output>/adapter`, so evaluate and export are
the same for both backends.

Two details of AutoModel 0.7 that matter for correctness:
- LoRA target patterns are matched against full module names: "q_proj" matches nothing,
  "*.q_proj" matches every layer's.
- The prompt format and loss mask come from a chat template whose assistant turn sits in
  `{% generation %}`: it renders exactly `components.prompt.render_prompt` and puts the
  loss on the response and EOS, like the `hf` backend's `encode_record`.
AutoModel needs CUDA (its model loader and recipe call CUDA APIs); the backend refuses to
start without a GPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from components import jsonout, storage
from components.model_source import resolve_model
from components.records import read_records
from components.train.plan import TrainError

log = logging.getLogger(__name__)

RECIPE_MODULE = "nemo_automodel.recipes.llm.train_ft"
# AutoModel pins its own transformers version, so images give it a virtual environment of its
# own (containers/train/Dockerfile); this variable names that environment's interpreter.
NEMO_PYTHON_ENV = "LLMFT_NEMO_PYTHON"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

# Spells out components.prompt's PROMPT_TEMPLATE and SYSTEM_TEMPLATE (a test checks it renders
# exactly what render_prompt does); the assistant turn (response + EOS) carries the loss.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' and m['content'] -%}"
    "{{ '### System:\\n' + m['content'] + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}"
    "{{ '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class NemoBackendError(RuntimeError):
    """NeMo AutoModel is missing, cannot run here, or its run failed."""


def write_chat_dataset(train_jsonl: Path, destination: Path) -> int:
    """Canonical records -> AutoModel ChatDataset lines ({"messages": [...]}); returns the count."""
    count = 0
    with open(destination, "w", encoding="utf-8") as handle:
        for record in read_records(train_jsonl):
            messages = [{"role": "system", "content": record.system}] if record.system else []
            messages += [
                {"role": "user", "content": record.prompt},
                {"role": "assistant", "content": record.response},
            ]
            handle.write(jsonout.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            count += 1
    return count


def recipe_config(
    config: Any,
    model_dir: Path,
    dataset_path: Path,
    template_path: Path,
    checkpoint_dir: Path,
    total_steps: int,
    world_size: int,
) -> dict[str, Any]:
    """TrainConfig -> AutoModel's TrainFinetuneRecipeForNextTokenPrediction YAML (as a mapping)."""
    dtype = {"auto": "bfloat16", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[config.precision]
    return {
        "seed": config.seed,
        "dist_env": {"backend": "nccl", "timeout_minutes": 30},
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": str(model_dir),
            "torch_dtype": dtype,
            "attn_implementation": "sdpa",
        },
        "peft": {
            "_target_": "nemo_automodel.components._peft.lora.PeftConfig",
            "target_modules": [f"*.{name}" for name in config.lora.target_modules],
            "dim": config.lora.r,
            "alpha": config.lora.alpha,
            "dropout": config.lora.dropout,
            "dropout_position": "pre",  # on the LoRA input, as Hugging Face PEFT does
            "use_triton": False,
        },
        "distributed": {
            "strategy": "fsdp2",
            "dp_size": None,
            "tp_size": 1,
            "cp_size": 1,
            "pp_size": 1,
            "sequence_parallel": False,
            # Every decoder layer or none: AutoModel has no per-layer plan like the hf backend's.
            "activation_checkpointing": config.gradient_checkpointing,
        },
        "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
        "dataset": {
            "_target_": "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset",
            "path_or_dataset_id": str(dataset_path),
            "chat_template": str(template_path),
            "seq_length": config.max_length,
            "padding": "do_not_pad",
            "truncation": "longest_first",
        },
        "packed_sequence": {"packed_sequence_size": 0},
        "dataloader": {
            "_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
            "collate_fn": "nemo_automodel.components.datasets.utils.default_collater",
            "shuffle": True,
        },
        "step_scheduler": {
            "local_batch_size": config.micro_batch_size,
            "global_batch_size": max(config.global_batch_size, config.micro_batch_size * world_size),
            "max_steps": total_steps,
            "num_epochs": 1_000_000,  # max_steps decides; AutoModel's default of 10 epochs would cut it short
            "ckpt_every_steps": config.save_every_steps or total_steps,
            "val_every_steps": None,
        },
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "lr": config.learning_rate,
            "weight_decay": config.weight_decay,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
        },
        "lr_scheduler": {
            "lr_decay_style": "cosine",
            "lr_warmup_steps": int(config.warmup_ratio * total_steps),
            "min_lr": 0.0,
        },
        "clip_grad_norm": {"max_norm": 1.0},
        "checkpoint": {
            "enabled": True,
            "checkpoint_dir": str(checkpoint_dir),
            "model_save_format": "safetensors",
            "save_consolidated": False,
        },
    }


def nemo_python() -> str:
    return os.environ.get(NEMO_PYTHON_ENV, sys.executable)


def recipe_command(config_path: Path, nproc_per_node: int) -> list[str]:
    """The command that runs the recipe: one process for one GPU, torchrun for several."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}"]
    recipe = ["-m", RECIPE_MODULE, "-c", str(config_path)]
    return [nemo_python(), *(launcher if nproc_per_node > 1 else []), *recipe]


def require_nemo_automodel() -> None:
    """Fail early and clearly where AutoModel cannot run."""
    import torch

    probe = subprocess.run([nemo_python(), "-c", "import nemo_automodel"], capture_output=True, check=False)
    if probe.returncode != 0:
        raise NemoBackendError(
            f"backend='nemo' needs NVIDIA NeMo AutoModel, which {nemo_python()} cannot import: run it in the "
            f"llmft train image, or install nemo-automodel in a virtual environment of its own (it pins its "
            f"own transformers version) and point {NEMO_PYTHON_ENV} at that environment's python"
        )
    if not torch.cuda.is_available():
        raise NemoBackendError(
            "backend='nemo' needs a CUDA GPU (NeMo AutoModel does not run on CPU); "
            "use backend='hf' on this machine"
        )


def read_losses(checkpoint_dir: Path) -> tuple[list[tuple[int, float]], int, int]:
    """The loss curve from AutoModel's training.jsonl (steps counted from 1, like the hf backend),
    the number of response tokens trained on and the number of all tokens, prompts included."""
    path = checkpoint_dir / "training.jsonl"
    if not path.is_file():
        return [], 0, 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    curve = [(int(row["step"]) + 1, float(row["loss"])) for row in rows]
    for row, (step, loss) in zip(rows, curve, strict=True):
        # AutoModel trains on through NaN; its adapter is then NaN too and must not be published.
        grad_norm = float(row.get("grad_norm", 0.0))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainError(
                f"NeMo AutoModel step {step}: the loss is {loss} and the gradient norm is {grad_norm} "
                f"({path}): training diverged; the likely cause is a learning rate too high for this "
                "model (try learning_rate 10 times lower), or non-finite weights in the base model. "
                "No adapter was written"
            )
    label_tokens = sum(int(row.get("num_label_tokens", 0)) for row in rows)
    return curve, label_tokens, sum(int(row.get("num_tokens_per_step", 0)) for row in rows)


def latest_adapter_dir(checkpoint_dir: Path) -> Path:
    """The `model/` folder of AutoModel's newest checkpoint (LATEST, else the highest step)."""
    latest = checkpoint_dir / "LATEST"
    candidates = (
        [latest.resolve()]
        if latest.exists()
        else sorted(checkpoint_dir.glob("epoch_*_step_*"), key=lambda path: int(path.name.rsplit("_", 1)[1]))[
            -1:
        ]
    )
    for candidate in candidates:
        model_dir = candidate / "model"
        if all((model_dir / name).is_file() for name in ADAPTER_FILES):
            return model_dir
    raise NemoBackendError(
        f"NeMo AutoModel wrote no adapter under {checkpoint_dir} "
        f"(expected {', '.join(ADAPTER_FILES)} in <checkpoint>/model/)"
    )


def run_recipe(config: Any, total_steps: int, nproc_per_node: int, workdir: Path) -> Path:
    """Write the dataset, template and YAML, run AutoModel; return its checkpoint directory."""
    require_nemo_automodel()
    data_dir = storage.localize_dir(config.data)
    model_dir = resolve_model(config.base_model).local_dir
    workdir.mkdir(parents=True, exist_ok=True)
    dataset_path = workdir / "train_messages.jsonl"
    records = write_chat_dataset(data_dir / "train.jsonl", dataset_path)
    template_path = workdir / "chat_template.jinja"
    template_path.write_text(CHAT_TEMPLATE, encoding="utf-8")
    # AutoModel resumes by itself from the newest checkpoint in this directory.
    checkpoint_dir = workdir / "checkpoints"
    recipe = recipe_config(
        config, model_dir, dataset_path, template_path, checkpoint_dir, total_steps, nproc_per_node
    )
    config_path = workdir / "recipe.yaml"
    config_path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    command = recipe_command(config_path, nproc_per_node)
    log.info("NeMo AutoModel: %d records, %d steps: %s", records, total_steps, " ".join(command))
    started = time.perf_counter()
    process = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    if process.returncode != 0:
        raise NemoBackendError(
            f"NeMo AutoModel exited with {process.returncode} after "
            f"{time.perf_counter() - started:.0f} s; see its log above ({config_path})"
        )
    return checkpoint_dir


def publish_adapter(
    adapter_dir: Path, base_model: str, destination: str, steps: int, lineage: dict[str, str] | None = None
) -> None:
    """Publish AutoModel's adapter (PEFT format) with our manifest, pointing at our base model URI.

    `lineage`: the base model's digest and Hub commit (`ModelSource.lineage()`), recorded beside it.
    """
    with tempfile.TemporaryDirectory() as staging:
        for path in adapter_dir.iterdir():
            if path.is_file():
                shutil.copy2(path, Path(staging) / path.name)
        adapter_config = json.loads((Path(staging) / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = base_model
        (Path(staging) / "adapter_config.json").write_text(jsonout.dumps(adapter_config, indent=2))
        storage.publish_dir(
            staging,
            destination,
            producer="llmft.train",
            metadata={**(lineage or {}), "base_model": base_model, "steps": steps, "backend": "nemo"},
        )
