"""Triton python-backend model `preprocessing` of the TensorRT-LLM ensemble (serving mode trtllm-engine).

llmft build copies this file to `preprocessing/1/model.py` with `llmft_triton_utils.py`
and the tokenizer (`preprocessing/1/tokenizer/`) beside it. It renders the prompt template
around each raw instruction and tokenises it exactly as training did, then hands the
`tensorrt_llm` model its per-request inputs: token ids and lengths, the output length
(`max_tokens`, default `max_new_tokens`), end/pad ids and the sampling values that give
`temperature` the hf mode's meaning (0 greedy, > 0 sampling). Requests are checked against
llmft_triton_utils.RequestLimits first (prompt bytes before tokenizing, max_tokens_limit,
max_input_len, max_seq_len): a refusal is InvalidArgument (HTTP 400) naming the limit.

Tensor names follow the preprocessing model of tensorrtllm_backend's inflight_batcher_llm.
"""

from __future__ import annotations

import json
import os

import llmft_triton_utils as utils
import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


def _optional(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _column(values: list, dtype) -> np.ndarray:
    return np.array(values, dtype=dtype).reshape(-1, 1)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.template = utils.parameter(config, "prompt_template", "{prompt}")
        self.default_max_tokens = int(utils.parameter(config, "max_new_tokens", "64"))
        self.limits = utils.request_limits(config)
        tokenizer_dir = utils.resolve_dir(version_dir, utils.parameter(config, "tokenizer_dir", "tokenizer"))
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.end_id = self.tokenizer.eos_token_id
        if self.end_id is None:
            raise pb_utils.TritonModelException(
                f"the tokenizer in {tokenizer_dir} has no EOS token to stop at"
            )
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id
        pb_utils.Logger.log_info(f"llmft preprocessing: tokenizer from {tokenizer_dir}")

    def _outputs(self, request) -> list:
        # Cheapest checks first: nothing is tokenized for a request that cannot be served.
        query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
        prompts = utils.prompts(query, self.limits.max_prompt_bytes, name="text_input")
        rows = len(prompts)
        max_tokens = utils.per_row(
            _optional(request, "REQUEST_OUTPUT_LEN"), "max_tokens", rows, self.default_max_tokens, int
        )
        temperatures = utils.per_row(_optional(request, "TEMPERATURE"), "temperature", rows, 0.0, float)
        utils.check_generation_args(max_tokens, temperatures, self.limits.max_tokens_limit)
        ids = utils.checked_prompt_ids(self.tokenizer, self.template, prompts, max_tokens, self.limits)
        width = max(len(tokens) for tokens in ids)
        # Padding only fills the rectangle; REQUEST_INPUT_LEN tells the engine each row's length.
        padded = np.array([tokens + [self.pad_id] * (width - len(tokens)) for tokens in ids], dtype=np.int32)
        sampling = [utils.executor_sampling(value) for value in temperatures]
        return [
            pb_utils.Tensor("INPUT_ID", padded),
            pb_utils.Tensor("REQUEST_INPUT_LEN", _column([len(tokens) for tokens in ids], np.int32)),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", _column(max_tokens, np.int32)),
            pb_utils.Tensor("OUT_END_ID", _column([self.end_id] * rows, np.int32)),
            pb_utils.Tensor("OUT_PAD_ID", _column([self.pad_id] * rows, np.int32)),
            pb_utils.Tensor("OUT_TEMPERATURE", _column([value[0] for value in sampling], np.float32)),
            pb_utils.Tensor("OUT_RUNTIME_TOP_K", _column([value[1] for value in sampling], np.int32)),
            pb_utils.Tensor("OUT_RUNTIME_TOP_P", _column([value[2] for value in sampling], np.float32)),
        ]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._outputs(request)))
            except Exception as exc:  # one bad request must not fail the others in the batch
                error = utils.triton_error(pb_utils, exc)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
