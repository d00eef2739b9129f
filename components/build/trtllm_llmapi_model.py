"""Triton python-backend model of serving mode trtllm-llmapi: TRT-LLM's PyTorch backend, no engine.

llmft build copies this file to `<model_name>/1/model.py`, with `model.yaml` (the
`LLM()` arguments, in the layout of tensorrtllm_backend's all_models/llmapi model:
LLM arguments plus a `triton_config` section), `llmft_triton_utils.py` and the merged HF
checkpoint (`1/checkpoint/`) beside it. `model: checkpoint` in model.yaml is relative to
this version directory, so the repository is self-contained.

The client contract is the hf mode's: `text_input` (raw instruction), optional
`max_tokens` and `temperature`, `text_output` (generated text only); in decoupled mode an
optional `stream` sends the text as it is generated. Prompts are tokenised here exactly as
in training, with the checkpoint's HF tokenizer (not `LLM.tokenizer`, TRT-LLM's wrapper), and
passed to TRT-LLM as token ids, so the template cannot be applied twice.
Requests are checked against llmft_triton_utils.RequestLimits first (prompt bytes before
tokenizing, max_tokens_limit, max_input_len, max_seq_len): a refusal is InvalidArgument (400).

Every request goes to `LLM.generate_async` at once and is answered from a worker thread
through its response sender: TRT-LLM batches requests in flight, and a slow request does
not hold up the others. TensorRT-LLM is imported in `initialize`, inside the Triton stub
of the trtllm image, after Triton has chosen the GPUs.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import llmft_triton_utils as utils
import triton_python_backend_utils as pb_utils
import yaml
from transformers import AutoTokenizer

# Requests answered at the same time; each waits on TRT-LLM in its own thread.
_MAX_CONCURRENT_REQUESTS = 256


def _optional(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _error_response(error: Exception):
    return pb_utils.InferenceResponse(output_tensors=[], error=utils.triton_error(pb_utils, error))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from tensorrt_llm import LLM, SamplingParams
        from tensorrt_llm.llmapi.llm_utils import update_llm_args_with_extra_dict

        self.sampling_params = SamplingParams
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "model.yaml"), encoding="utf-8") as handle:
            yaml_args = yaml.safe_load(handle)
        yaml_args.pop("triton_config", None)
        yaml_args["model"] = utils.resolve_dir(version_dir, yaml_args["model"])
        # Nested sections (kv_cache_config) become TRT-LLM's config objects, as trtllm-serve does it.
        llm_args = update_llm_args_with_extra_dict({}, yaml_args)
        self.template = utils.parameter(config, "prompt_template", "{prompt}")
        self.default_max_tokens = int(utils.parameter(config, "max_new_tokens", "64"))
        self.limits = utils.request_limits(config, max_seq_len=int(yaml_args["max_seq_len"]))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.llm = LLM(**llm_args)
        # The checkpoint's own HF tokenizer, loaded as training loads it: `LLM.tokenizer` is
        # TRT-LLM's TransformersTokenizer wrapper, which has no bos_token_id and loads with
        # other options (legacy=False, left padding), so prompts could tokenize differently.
        self.tokenizer = AutoTokenizer.from_pretrained(yaml_args["model"])
        self.pool = ThreadPoolExecutor(
            max_workers=_MAX_CONCURRENT_REQUESTS, thread_name_prefix="llmft-llmapi"
        )
        pb_utils.Logger.log_info(f"llmft llmapi model loaded from {yaml_args['model']}")

    def _submit(self, request):
        """Start generation for one request; return (TRT-LLM result, streaming?)."""
        # Cheapest checks first: nothing is tokenized for a request that cannot be served.
        text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
        [prompt] = utils.prompts(text, self.limits.max_prompt_bytes)
        [max_tokens] = utils.per_row(
            _optional(request, "max_tokens"), "max_tokens", 1, self.default_max_tokens, int
        )
        [temperature] = utils.per_row(_optional(request, "temperature"), "temperature", 1, 0.0, float)
        [stream] = utils.per_row(_optional(request, "stream"), "stream", 1, False, bool)
        utils.check_generation_args([max_tokens], [temperature], self.limits.max_tokens_limit)
        if stream and not self.decoupled:
            raise ValueError("stream=true needs the model's decoupled mode (build with --triton-decoupled)")
        [ids] = utils.checked_prompt_ids(self.tokenizer, self.template, [prompt], [max_tokens], self.limits)
        params = self.sampling_params(**utils.llmapi_sampling(temperature, max_tokens))
        return self.llm.generate_async(ids, sampling_params=params, streaming=stream), stream

    @staticmethod
    def _text_response(text: str):
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor("text_output", utils.text_array(text))]
        )

    @classmethod
    def _answer(cls, sender, result, stream: bool) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            if stream:
                for partial in result:
                    sender.send(cls._text_response(partial.outputs[0].text_diff))
                sender.send(flags=final)
            else:
                sender.send(cls._text_response(result.result().outputs[0].text), flags=final)
        except Exception as exc:  # the error goes to this request's client; the model keeps serving
            sender.send(_error_response(exc), flags=final)

    def execute(self, requests: list) -> None:
        # Inputs are read here, while Triton still holds the requests; the waiting on
        # TRT-LLM happens in worker threads, each answering through its response sender.
        for request in requests:
            sender = request.get_response_sender()
            try:
                result, stream = self._submit(request)
            except Exception as exc:  # a bad request gets its error; the others go on
                sender.send(_error_response(exc), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            self.pool.submit(self._answer, sender, result, stream)

    def finalize(self) -> None:
        self.pool.shutdown(wait=True)
        self.llm.shutdown()
