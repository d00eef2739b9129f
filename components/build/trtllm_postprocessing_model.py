"""Triton python-backend model `postprocessing` of the TensorRT-LLM ensemble (serving mode trtllm-engine).

llmft build copies this file to `postprocessing/1/model.py` with `llmft_triton_utils.py`
and the tokenizer (`postprocessing/1/tokenizer/`) beside it. It turns the `tensorrt_llm`
model's output ids back into text: each beam's first `SEQUENCE_LENGTH` ids, cut at EOS
and decoded without special tokens, like the hf mode's `text_output`. The engine is
configured with exclude_input_in_output, so the ids are only the generated ones.

With streaming (decoupled mode) each response carries only the newest ids, and this model
decodes each chunk on its own.

Tensor names follow the postprocessing model of tensorrtllm_backend's inflight_batcher_llm.
"""

from __future__ import annotations

import json
import os

import llmft_triton_utils as utils
import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        tokenizer_dir = utils.resolve_dir(version_dir, utils.parameter(config, "tokenizer_dir", "tokenizer"))
        self.skip_special_tokens = utils.parameter(config, "skip_special_tokens", "true") == "true"
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.eos_id = self.tokenizer.eos_token_id
        pb_utils.Logger.log_info(f"llmft postprocessing: tokenizer from {tokenizer_dir}")

    def _decode(self, ids: np.ndarray, length: int) -> bytes:
        tokens = utils.cut_at_eos([int(token) for token in ids[:length]], self.eos_id)
        return self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens).encode("utf-8")

    def _outputs(self, request) -> list:
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [rows, beams, ids]
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [rows, beams]
        texts = [
            [
                self._decode(beam_ids, int(length))
                for beam_ids, length in zip(row_ids, row_lengths, strict=True)
            ]
            for row_ids, row_lengths in zip(tokens, lengths, strict=True)
        ]
        return [pb_utils.Tensor("OUTPUT", np.array(texts, dtype=np.object_))]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._outputs(request)))
            except Exception as exc:  # one bad request must not fail the others in the batch
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                )
        return responses
