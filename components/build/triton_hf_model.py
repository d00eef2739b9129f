"""Triton python-backend model: a Hugging Face causal LM behind Triton's generate extension.

llmft build (serving mode `hf`) copies this file to `<model_name>/1/model.py`; the merged
checkpoint sits beside it in `1/checkpoint/`. It runs inside Triton's python backend stub,
not inside llmft, so it imports nothing from llmft and reads its settings from the
`parameters` of config.pbtxt.

Requests carry the raw instruction in `text_input`; this model renders the prompt
template (the one used in training), generates greedily (or samples when `temperature`
> 0), stops at EOS and returns only the new text in `text_output`. Several requests that
Triton's dynamic batcher hands over together are generated as one left-padded batch
per (max_tokens, temperature) pair.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass(frozen=True)
class _Row:
    request: int  # index into this execute() call's requests
    prompt: str
    max_tokens: int
    temperature: float


def _parameter(config: dict, name: str, default: str) -> str:
    return config.get("parameters", {}).get(name, {}).get("string_value", default)


def _strings(tensor) -> list[str]:
    return [
        item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in tensor.as_numpy().ravel()
    ]


def _per_row(request, name: str, rows: int, default, cast) -> list:
    """An optional input as one value per row: absent -> default, one value -> broadcast."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [default] * rows
    values = [cast(value) for value in tensor.as_numpy().ravel()]
    if len(values) == 1:
        return values * rows
    if len(values) != rows:
        raise ValueError(f"{name} has {len(values)} values for {rows} text_input rows")
    return values


def _resolve_device(setting: str, instance_kind: str, device_id: int) -> torch.device:
    if setting == "cpu" or (setting == "auto" and (instance_kind != "GPU" or not torch.cuda.is_available())):
        return torch.device("cpu")
    return torch.device("cuda", device_id)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.template = _parameter(config, "prompt_template", "{prompt}")
        self.default_max_tokens = int(_parameter(config, "max_new_tokens", "64"))
        checkpoint = os.path.join(
            args["model_repository"], args["model_version"], _parameter(config, "checkpoint", "checkpoint")
        )
        self.device = _resolve_device(
            _parameter(config, "device", "auto"),
            args.get("model_instance_kind", "CPU"),
            int(args.get("model_instance_device_id", 0) or 0),
        )
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        # Half precision only on GPU: CPU kernels for fp16/bf16 are slow or missing.
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(self.device).eval()
        self.eos_id = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_id
        self.logger.log_info(f"llmft hf model loaded from {checkpoint} on {self.device}")

    def _prompt_ids(self, prompt: str) -> list[int]:
        # Same ids training conditioned on (components/train/data.py prompt_ids):
        # BOS, then the rendered template tokenised without special tokens.
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        text = self.template.format(prompt=prompt)
        return bos + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def _generate(self, prompts: list[str], max_tokens: int, temperature: float) -> list[str]:
        encoded = [self._prompt_ids(prompt) for prompt in prompts]
        width = max(len(ids) for ids in encoded)
        # Left padding: every row's last prompt token sits in the last column, where
        # generation continues.
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in encoded])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            max_new_tokens=max_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            **sampling,
        )
        texts = []
        for row in output[:, width:].tolist():
            if self.eos_id is not None and self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts

    def execute(self, requests: list) -> list:
        rows: list[_Row] = []
        shapes: dict[int, tuple[int, ...]] = {}
        errors: dict[int, str] = {}
        for index, request in enumerate(requests):
            try:
                text = pb_utils.get_input_tensor_by_name(request, "text_input")
                prompts = _strings(text)
                count = len(prompts)
                max_tokens = _per_row(request, "max_tokens", count, self.default_max_tokens, int)
                temperatures = _per_row(request, "temperature", count, 0.0, float)
                if any(value < 1 for value in max_tokens):
                    raise ValueError("max_tokens must be at least 1")
                if any(not np.isfinite(value) or value < 0 for value in temperatures):
                    raise ValueError("temperature must be a finite number >= 0")
            except Exception as exc:  # one bad request must not fail the others in the batch
                errors[index] = str(exc)
                continue
            shapes[index] = tuple(text.as_numpy().shape)
            rows.extend(
                _Row(index, *values) for values in zip(prompts, max_tokens, temperatures, strict=True)
            )

        outputs: dict[int, list[str]] = {index: [] for index in shapes}
        groups: dict[tuple[int, float], list[_Row]] = {}
        for row in rows:
            groups.setdefault((row.max_tokens, row.temperature), []).append(row)
        generated: dict[int, str] = {}  # id(row) -> text
        for (max_tokens, temperature), group in groups.items():
            try:
                texts = self._generate([row.prompt for row in group], max_tokens, temperature)
            except Exception as exc:
                self.logger.log_error(f"generation failed: {exc}")
                for row in group:
                    errors[row.request] = f"generation failed: {exc}"
                continue
            generated.update({id(row): text for row, text in zip(group, texts, strict=True)})
        for row in rows:
            if row.request not in errors:
                outputs[row.request].append(generated[id(row)])

        responses = []
        for index in range(len(requests)):
            if index in errors:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(errors[index]))
                )
                continue
            array = np.array([text.encode("utf-8") for text in outputs[index]], dtype=np.object_)
            tensor = pb_utils.Tensor("text_output", array.reshape(shapes[index]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
