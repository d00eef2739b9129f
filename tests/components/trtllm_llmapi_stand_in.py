"""A recording stand-in for TensorRT-LLM 1.2.x's LLM API (tests only): echoes what it was asked.

The llmapi model tests copy this file to `tensorrt_llm/__init__.py` beside the served
model.py. Each class is shaped after its upstream class in TensorRT-LLM 1.2.x, cited beside
it: what upstream has is here, what upstream lacks is not, and `__slots__` (plain or through
`dataclass(slots=True)`) makes reading or setting any other attribute raise AttributeError,
as the real class would. A model that touches an attribute upstream lacks fails its test.
Private members (leading underscore) are the stand-in's own bookkeeping.
"""

from __future__ import annotations

import dataclasses
import json
import os

from transformers import AutoTokenizer

__version__ = "1.2.1"


class TransformersTokenizer:
    """After `TransformersTokenizer` in tensorrt_llm/llmapi/tokenizer.py (TRT-LLM 1.2.x).

    What `LLM.tokenizer` returns: a wrapper holding the HF tokenizer as `.tokenizer`, with
    `__call__`, `eos_token_id`, `pad_token_id`, `name_or_path`, `encode` and `decode`.
    It has no `bos_token_id`: upstream subclasses `PreTrainedTokenizerBase` without calling
    its `__init__`, so the special-token attributes it does not define raise AttributeError.
    """

    __slots__ = ("tokenizer",)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, *args, **kwargs):
        return self.tokenizer(text, *args, **kwargs)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def name_or_path(self) -> str:
        return self.tokenizer.name_or_path

    def encode(self, text, *args, **kwargs) -> list[int]:
        return self.tokenizer.encode(text, *args, **kwargs)

    def decode(self, token_ids, *args, **kwargs) -> str:
        return self.tokenizer.decode(token_ids, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_dir: str, **kwargs):
        return cls(AutoTokenizer.from_pretrained(pretrained_model_dir, **kwargs))


@dataclasses.dataclass(slots=True, kw_only=True)
class SamplingParams:
    """After the `SamplingParams` dataclass in tensorrt_llm/sampling_params.py (TRT-LLM 1.2.x;
    read at NVIDIA/TensorRT-LLM commit 000a01de): `@dataclass(slots=True, kw_only=True)`,
    `max_tokens: int = 32`, `temperature`, `top_k`, `top_p` Optional and None by default.

    Only the fields llmft sets; an unknown keyword is a TypeError and a positional argument is
    refused, as upstream.
    """

    max_tokens: int = 32
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


@dataclasses.dataclass(slots=True)
class CompletionOutput:
    """After `CompletionOutput` in tensorrt_llm/executor/result.py (TRT-LLM 1.2.x).

    `text` is everything generated so far; `text_diff` the part added since the last step.
    """

    index: int
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    _last_text_len: int = dataclasses.field(default=0, init=False, repr=False)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len :]


class RequestOutput:
    """After `RequestOutput` (a `GenerationResult`) in tensorrt_llm/llmapi/llm.py and
    tensorrt_llm/executor/result.py (TRT-LLM 1.2.x).

    `generate_async` returns it at once; iterating yields the same object after each step
    (streaming), `result()` waits for the end and returns it.
    """

    __slots__ = ("_pending", "finished", "outputs", "prompt", "prompt_token_ids")

    def __init__(self, prompt_token_ids: list[int], steps: list[str]):
        self.prompt = None
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [CompletionOutput(index=0)]
        self.finished = False
        self._pending = list(steps)

    def __iter__(self):
        while self._pending:
            output = self.outputs[0]
            output._last_text_len = len(output.text)
            output.text += self._pending.pop(0)
            self.finished = not self._pending
            yield self

    def result(self, timeout: float | None = None) -> RequestOutput:
        for _ in self:
            pass
        return self


class LLM:
    """After `LLM` in tensorrt_llm/llmapi/llm.py (TRT-LLM 1.2.x, the PyTorch backend).

    Records its arguments to $FAKE_LLM_RECORD; `generate_async` answers with a JSON echo of
    the prompt ids and the sampling parameters it was given (None fields left out), in two
    steps when streaming, in one otherwise.
    """

    __slots__ = ("_tokenizer",)

    def __init__(self, model: str, **kwargs):
        with open(os.environ["FAKE_LLM_RECORD"], "w", encoding="utf-8") as handle:
            recorded = dict(kwargs, model=model, kv_cache_config=repr(kwargs["kv_cache_config"]))
            json.dump(recorded, handle)
        # As upstream's ModelLoader.load_hf_tokenizer loads it.
        self._tokenizer = TransformersTokenizer.from_pretrained(
            model,
            legacy=False,
            padding_side="left",
            truncation_side="left",
            trust_remote_code=True,
            use_fast=True,
        )

    @property
    def tokenizer(self) -> TransformersTokenizer:
        return self._tokenizer

    def generate_async(
        self, inputs, sampling_params: SamplingParams | None = None, *, streaming: bool = False
    ):
        if not (isinstance(inputs, list) and all(isinstance(token, int) for token in inputs)):
            raise TypeError(f"the stand-in takes prompts as token ids, got {type(inputs).__name__}")
        params = sampling_params if sampling_params is not None else SamplingParams()
        asked = {name: value for name, value in dataclasses.asdict(params).items() if value is not None}
        text = json.dumps({"ids": inputs, "sampling": asked})
        steps = [text[: len(text) // 2], text[len(text) // 2 :]] if streaming else [text]
        return RequestOutput(inputs, steps)

    def shutdown(self) -> None:
        pass
