"""Triton python-backend model: a Hugging Face causal LM behind Triton's generate extension.

llmft build (serving mode `hf`) copies this file to `<model_name>/1/model.py`, with
`llmft_triton_utils.py` (prompt ids and request limits shared with the TensorRT-LLM modes)
beside it and the merged checkpoint in `1/checkpoint/`. It runs inside Triton's python
backend stub, not inside llmft, so it imports nothing from llmft and reads its settings
from the `parameters` of config.pbtxt.

Requests carry the raw instruction in `text_input`; this model renders the prompt
template (the one used in training), generates greedily (or samples when `temperature`
> 0), stops at EOS and returns only the new text in `text_output`. Several requests that
Triton's dynamic batcher hands over together are generated as one left-padded batch
per (max_tokens, temperature) pair.

Each request is checked before it costs anything (llmft_triton_utils.RequestLimits): an
empty or oversized prompt, max_tokens above max_tokens_limit, or a prompt that with its
max_tokens does not fit the model's context is answered with InvalidArgument (HTTP 400)
naming the limit, and the other requests of the batch go on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import llmft_triton_utils as utils
import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass(frozen=True)
class _Row:
    request: int  # index into this execute() call's requests
    prompt_ids: list[int]
    max_tokens: int
    temperature: float


def _optional(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _resolve_device(setting: str, instance_kind: str, device_id: int) -> torch.device:
    if setting == "cpu" or (setting == "auto" and (instance_kind != "GPU" or not torch.cuda.is_available())):
        return torch.device("cpu")
    return torch.device("cuda", device_id)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.template = utils.parameter(config, "prompt_template", "{prompt}")
        self.default_max_tokens = int(utils.parameter(config, "max_new_tokens", "64"))
        self.limits = utils.request_limits(config)
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        checkpoint = os.path.join(version_dir, utils.parameter(config, "checkpoint", "checkpoint"))
        self.device = _resolve_device(
            utils.parameter(config, "device", "auto"),
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
        self.logger.log_info(f"llmft hf model loaded from {checkpoint} on {self.device}; {self.limits}")

    def _request_rows(self, index: int, request) -> tuple[list[_Row], tuple[int, ...]]:
        """The rows of one request, checked against the limits (cheapest checks first)."""
        array = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
        prompts = utils.prompts(array, self.limits.max_prompt_bytes)
        count = len(prompts)
        max_tokens = utils.per_row(
            _optional(request, "max_tokens"), "max_tokens", count, self.default_max_tokens, int
        )
        temperatures = utils.per_row(_optional(request, "temperature"), "temperature", count, 0.0, float)
        utils.check_generation_args(max_tokens, temperatures, self.limits.max_tokens_limit)
        # Same ids training conditioned on (components/train/data.py prompt_ids).
        ids = utils.checked_prompt_ids(self.tokenizer, self.template, prompts, max_tokens, self.limits)
        rows = [_Row(index, *values) for values in zip(ids, max_tokens, temperatures, strict=True)]
        return rows, tuple(array.shape)

    def _generate_text(self, prompt: str, max_tokens: int, temperature: float) -> str:
        """One prompt's answer, checked like a request (for models built on this one)."""
        [ids] = utils.checked_prompt_ids(self.tokenizer, self.template, [prompt], [max_tokens], self.limits)
        return self._generate([ids], max_tokens, temperature)[0]

    @torch.inference_mode()
    def _generate(self, encoded: list[list[int]], max_tokens: int, temperature: float) -> list[str]:
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
        errors: dict[int, Exception] = {}
        for index, request in enumerate(requests):
            try:
                request_rows, shapes[index] = self._request_rows(index, request)
            except Exception as exc:  # one bad request must not fail the others in the batch
                errors[index] = exc
                continue
            rows.extend(request_rows)

        outputs: dict[int, list[str]] = {index: [] for index in shapes}
        groups: dict[tuple[int, float], list[_Row]] = {}
        for row in rows:
            groups.setdefault((row.max_tokens, row.temperature), []).append(row)
        generated: dict[int, str] = {}  # id(row) -> text
        for (max_tokens, temperature), group in groups.items():
            try:
                texts = self._generate([row.prompt_ids for row in group], max_tokens, temperature)
            except Exception as exc:
                self.logger.log_error(f"generation failed: {exc}")
                for row in group:
                    errors[row.request] = RuntimeError(f"generation failed: {exc}")
                continue
            generated.update({id(row): text for row, text in zip(group, texts, strict=True)})
        for row in rows:
            if row.request not in errors:
                outputs[row.request].append(generated[id(row)])

        responses = []
        for index in range(len(requests)):
            if index in errors:
                error = utils.triton_error(pb_utils, errors[index])
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            array = np.array([text.encode("utf-8") for text in outputs[index]], dtype=np.object_)
            tensor = pb_utils.Tensor("text_output", array.reshape(shapes[index]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
