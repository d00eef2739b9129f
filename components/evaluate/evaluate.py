"""Evaluate a LoRA adapter against its base model and decide whether it may ship.

The base model is loaded once; the adapter is attached with `PeftModel.from_pretrained`
(never merged), and the base is scored inside `model.disable_adapter()`, so both sets of
numbers come from the same weights in memory, the same tokenizer and the same batches.

For each of base and tuned:
- validation loss: mean cross-entropy over the response tokens of every val record,
  encoded with train's `encode_record`, so it is the loss training optimised (each token
  weighs the same: summed over tokens, divided by the token count);
- generation metrics: greedy generation for the first `max_eval_records` val records,
  scored against the reference with exact match, token F1 and ROUGE-L (metrics.py).

The gate compares the two (see `decide_gate`), and, when a model version holds the
registry's `production` alias, scores that model on the same records and refuses a tuned
model worse than it by more than `gate.max_regression` (production.py,
`decide_production_gate`). With no production model the gate does not block; the
report says why. Outputs under `config.output`, published with a manifest written last:
    metrics.json       base and tuned scores, gate decision with reasons and thresholds
    generations.jsonl  one line per scored record: id, prompt, reference, base, tuned
    report.html        self-contained report (shown in the KFP UI as an HTML artifact)
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components import jsonout, storage
from components.evaluate import metrics
from components.evaluate.production import (
    PRODUCTION_ALIAS,
    ProductionLookup,
    ProductionModel,
    find_production,
)
from components.evaluate.report import render_report
from components.model_source import BASE_MODEL_HELP, HUB_SCHEME, ModelSource, resolve_model
from components.records import Record, read_records
from components.tracking import NULL_TRACKER, Tracker
from components.train.data import EncodedExample, encode_record, prompt_ids
from components.train.loss import validation_loss

log = logging.getLogger(__name__)

PRODUCER = "llmft.evaluate"
# Float differences like 0.30 - 0.25 land a hair below 0.05; a gate must not flip on that.
_TOLERANCE = 1e-9
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


class EvaluateError(ValueError):
    """The evaluation inputs cannot work; the message names the input and the reason."""


class GateThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_exact_match_gain: float = Field(
        0.0, description="The tuned model's exact match minus the base model's must be at least this."
    )
    max_val_loss: float | None = Field(
        None, description="When set, the tuned model's validation loss must be at most this."
    )
    min_tuned_exact_match: float = Field(
        0.0, ge=0.0, le=1.0, description="The tuned model's exact match must be at least this."
    )
    max_regression: float = Field(
        0.0,
        ge=0.0,
        description="The tuned model's regression_metric may be at most this much below the production "
        "model's (the version holding the registry's production alias); 0: no worse at all.",
    )
    regression_metric: Literal["exact_match", "token_f1", "rouge_l"] = Field(
        "exact_match", description="Metric compared with the production model."
    )


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_model: str = Field(min_length=1, description=BASE_MODEL_HELP)
    adapter: str = Field(
        min_length=1, description="LoRA adapter directory written by train (path or s3://, HF PEFT format)."
    )
    data: str = Field(
        min_length=1,
        description="Curated dataset directory written by curate (path or s3://); val.jsonl is used.",
    )
    output: str = Field(
        min_length=1,
        description="Directory (path or s3://) for metrics.json, generations.jsonl, report.html.",
    )
    max_eval_records: int = Field(
        256, ge=1, description="Generation metrics use the first N val records (file order, deterministic)."
    )
    max_new_tokens: int = Field(
        64, ge=1, description="Most tokens generated per record (greedy, stops at EOS)."
    )
    batch_size: int = Field(16, ge=1, description="Records per forward pass, for both loss and generation.")
    max_length: int = Field(
        512, ge=2, description="Most tokens per example for the loss; prompt + new tokens for generation."
    )
    gate: GateThresholds = Field(
        default_factory=GateThresholds, description="Thresholds the tuned model must meet."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to run: auto picks cuda when a GPU is visible, else cpu."
    )
    train_metrics: str | None = Field(
        None,
        description="Optional metrics.json of train (path or s3://); the report plots its loss curves.",
    )
    seed: int = Field(
        0, description="Random seed (greedy decoding is deterministic; this pins anything else)."
    )
    report_samples: int = Field(10, ge=0, description="How many generations the HTML report shows.")
    registered_model_name: str | None = Field(
        None,
        description="MLflow registered model whose production version the tuned model must not regress "
        "against (looked up in the tracking server's registry); unset: no comparison.",
    )
    production_alias: str = Field(
        PRODUCTION_ALIAS, min_length=1, description="Registry alias naming the model that serves now."
    )


class ModelScores(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val_loss: float = Field(description="Mean cross-entropy (nats) over response tokens of all val records.")
    perplexity: float = Field(description="exp(val_loss).")
    exact_match: float = Field(description="Share of generations equal to the reference after normalization.")
    token_f1: float = Field(description="Mean token-level F1 between generation and reference.")
    rouge_l: float = Field(description="Mean ROUGE-L F1 (longest common subsequence of tokens).")
    samples: int = Field(description="Number of val records the generation metrics were averaged over.")


SCORE_NAMES = ("val_loss", "perplexity", "exact_match", "token_f1", "rouge_l")


class EvaluateResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output: str = Field(
        min_length=1, description="Directory holding metrics.json, generations.jsonl and report.html."
    )
    base: ModelScores = Field(description="Scores of the base model (adapter disabled).")
    tuned: ModelScores = Field(description="Scores of the base model with the adapter.")
    passed: bool = Field(description="Whether the tuned model met every gate threshold.")
    reasons: list[str] = Field(description="One line per threshold: the measured value against it.")
    production: ModelScores | None = Field(
        None, description="Scores of the model holding the production alias; None when there is none."
    )
    production_version: str | None = Field(None, description="Registry version of that model.")
    production_note: str = Field("", description="Whether and against what the tuned model was compared.")

    def summary(self) -> str:
        width = max(len(name) for name in SCORE_NAMES)
        production = self.production
        head = f"{'metric':<{width}}  {'base':>10}  {'tuned':>10}  {'delta':>10}"
        lines = [head + (f"  {'production':>10}" if production else "")]
        for name in SCORE_NAMES:
            base, tuned = getattr(self.base, name), getattr(self.tuned, name)
            line = f"{name:<{width}}  {base:>10.4f}  {tuned:>10.4f}  {tuned - base:>+10.4f}"
            lines.append(line + (f"  {getattr(production, name):>10.4f}" if production else ""))
        if self.production_note:
            lines.append(f"production: {self.production_note}")
        lines.append(f"gate: {'PASSED' if self.passed else 'FAILED'} ({'; '.join(self.reasons)})")
        return "\n".join(lines)


# --- pure logic ----------------------------------------------------------------------------


def _check(
    name: str, value: float, operator: Literal[">=", "<="], limit: float, digits: int
) -> tuple[bool, str]:
    """One threshold check and a reason that reads as a true statement either way."""
    if operator == ">=":
        ok = value + _TOLERANCE >= limit
    else:
        ok = math.isfinite(value) and value <= limit + _TOLERANCE  # nan (diverged training) fails
    shown = operator if ok else {">=": "<", "<=": ">"}[operator]
    reason = f"{name} {value:.{digits}f} {shown} {limit:.{digits}f}"
    return ok, reason if ok else f"{reason} (required {operator} {limit:.{digits}f})"


def _nonfinite_checks(label: str, scores: ModelScores) -> list[tuple[bool, str]]:
    """A failed check for each score that is not a finite number: the gate fails closed on them.

    A threshold alone is not enough: inf passes a lower bound, and nan passes any check written
    as a negation; a non-finite score means broken weights, so none is left to chance.
    """
    return [
        (
            False,
            f"{label} {name} is {value} (required: a finite number; the model's weights or outputs are "
            "not finite, or no response token was scored)",
        )
        for name in SCORE_NAMES
        if not math.isfinite(value := getattr(scores, name))
    ]


def decide_gate(base: ModelScores, tuned: ModelScores, thresholds: GateThresholds) -> tuple[bool, list[str]]:
    """Check every threshold (not just up to the first failure) so the reasons tell the whole story."""
    checks = [
        *_nonfinite_checks("base", base),
        *_nonfinite_checks("tuned", tuned),
        _check(
            "exact_match gain", tuned.exact_match - base.exact_match, ">=", thresholds.min_exact_match_gain, 3
        ),
        _check("tuned exact_match", tuned.exact_match, ">=", thresholds.min_tuned_exact_match, 3),
    ]
    if thresholds.max_val_loss is not None:
        checks.append(_check("tuned val_loss", tuned.val_loss, "<=", thresholds.max_val_loss, 4))
    return all(ok for ok, _ in checks), [reason for _, reason in checks]


def decide_production_gate(
    tuned: ModelScores, production: ModelScores, thresholds: GateThresholds
) -> tuple[bool, str]:
    """No regression against the serving model: tuned >= production - max_regression on the metric."""
    name = thresholds.regression_metric
    nonfinite = _nonfinite_checks("production", production)
    if nonfinite:
        # Fail closed: a comparison with a model whose scores are not numbers proves nothing.
        return False, "; ".join(reason for _, reason in nonfinite)
    return _check(
        f"tuned {name} vs production",
        getattr(tuned, name) - getattr(production, name),
        ">=",
        -thresholds.max_regression,
        3,
    )


def scores_from(val_loss: float, predictions: list[str], references: list[str]) -> ModelScores:
    text = metrics.text_scores(predictions, references)
    return ModelScores(
        val_loss=val_loss, perplexity=metrics.perplexity(val_loss), samples=len(predictions), **text
    )


def fit_prompt(ids: list[int], room: int, keep_first: int) -> list[int]:
    """Trim a prompt to `room` tokens from the left, keeping the first `keep_first` (BOS), as train does."""
    if len(ids) <= room:
        return ids
    tail = max(room - keep_first, 0)
    return ids[:keep_first] + (ids[len(ids) - tail :] if tail else [])


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Left padding, so every prompt ends where generation starts."""
    longest = max(len(ids) for ids in sequences)
    input_ids = [[pad_id] * (longest - len(ids)) + ids for ids in sequences]
    attention = [[0] * (longest - len(ids)) + [1] * len(ids) for ids in sequences]
    return input_ids, attention


def cut_at_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids


def parse_train_curves(data: Any, source: str) -> dict[str, list[tuple[float, float]]]:
    """The `loss_curve` and `eval_curve` of train's metrics.json as lists of (step, loss)."""
    if not isinstance(data, dict):
        raise EvaluateError(f"{source}: expected a JSON object with loss_curve/eval_curve")
    curves: dict[str, list[tuple[float, float]]] = {}
    for key in ("loss_curve", "eval_curve"):
        points = data.get(key) or []
        try:
            curves[key] = [(float(step), float(loss)) for step, loss in points]
        except (TypeError, ValueError) as error:
            raise EvaluateError(f"{source}: {key} must be a list of [step, loss] pairs ({error})") from error
    if not any(curves.values()):
        raise EvaluateError(f"{source} has neither loss_curve nor eval_curve points")
    return curves


# --- inputs --------------------------------------------------------------------------------


def load_val_records(data_dir: Path) -> list[Record]:
    path = data_dir / "val.jsonl"
    if not path.is_file():
        raise EvaluateError(f"{path} not found: the data directory must hold curate's val.jsonl")
    records = list(read_records(path))
    if not records:
        raise EvaluateError(f"{path} holds no records: nothing to evaluate on")
    return records


def load_train_curves(uri: str) -> dict[str, list[tuple[float, float]]]:
    text = storage.localize_file(uri).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise EvaluateError(f"{uri} is not valid JSON ({error})") from error
    return parse_train_curves(data, uri)


def _same_model(candidate: str, base_uri: str, base_dir: Path, base_digest: str) -> bool | None:
    """True/False when `candidate` is known to be / not to be the base model; None when it cannot be told."""
    if candidate == base_uri or (
        not storage.is_s3(candidate)
        and not candidate.startswith(HUB_SCHEME)
        and Path(candidate).resolve() == base_dir.resolve()
    ):
        return True
    if candidate.startswith(HUB_SCHEME):
        return None  # a Hub id is compared through the recorded digest (see check_adapter_identity)
    try:
        if not storage.exists(candidate):
            return None  # e.g. a hub name, or a path on the machine that trained
        # A copy elsewhere is still the same model: compare content, not location.
        return storage.read_manifest(candidate).digest == base_digest
    except Exception as error:  # no access to another bucket is not a mismatch
        log.debug("cannot read %s to compare with the base model: %s", candidate, error)
        return None


def _same_digest(recorded: object, base_digest: str) -> bool | None:
    """Compare the base model digest train recorded with this one's: content digests (64 hex) differ
    only for different files; a Hub commit (40 hex) and a content digest cannot be compared."""
    if not isinstance(recorded, str) or not recorded:
        return None
    if recorded == base_digest:
        return True
    return False if len(recorded) == len(base_digest) == 64 else None


def check_adapter_identity(adapter_dir: Path, adapter_uri: str, base: ModelSource) -> None:
    """Refuse an adapter recorded as trained on another base model (by content, not by path)."""
    base_uri, base_dir = base.uri, base.local_dir
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise EvaluateError(f"{adapter_uri} is not a PEFT adapter directory: it has no adapter_config.json")
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    metadata = storage.read_manifest(adapter_uri).metadata
    # train records the base URI (and its digest) in the manifest; PEFT records the local path it loaded from.
    candidates = [metadata.get("base_model"), adapter_config.get("base_model_name_or_path")]
    candidates = [c for c in candidates if isinstance(c, str) and c]
    verdicts = {
        candidate: _same_model(candidate, base_uri, base_dir, base.digest) for candidate in candidates
    }
    by_digest = _same_digest(metadata.get("base_model_digest"), base.digest)
    if by_digest is not None:  # the recorded content digest decides, wherever the model lies now
        verdicts = {str(metadata.get("base_model") or "recorded in the adapter's manifest"): by_digest}
    if any(verdicts.values()):
        return
    if False in verdicts.values():
        recorded = ", ".join(c for c, same in verdicts.items() if same is False)
        raise EvaluateError(
            f"adapter {adapter_uri} was trained on base model {recorded}, whose content differs from "
            f"--base-model {base_uri}: evaluate it against the base model it was trained on"
        )
    if candidates:
        log.warning(
            "adapter %s records base model %s; cannot confirm it is %s (checking layer shapes instead)",
            adapter_uri,
            candidates,
            base_uri,
        )


def _device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise EvaluateError(
            "device='cuda' was requested but no CUDA GPU is visible (use device='auto' or 'cpu')"
        )
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def device_map(device: str, visible_gpus: int) -> str:
    """Where from_pretrained puts the weights: the device, or spread over every visible GPU ("auto").

    The evaluate profile asks for one GPU (enough for the models llmft tunes); a profile that gives
    more gets them used, for a model too large for one, instead of leaving them idle.
    """
    return "auto" if device == "cuda" and visible_gpus > 1 else device


def gpus_used(device: str, visible_gpus: int) -> int:
    """GPUs evaluation occupies: every visible one on cuda (see `device_map`), none on the CPU."""
    return visible_gpus if device == "cuda" else 0


def _dtype(device: str) -> Any:
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def attach_adapter(model: Any, adapter_dir: Path, adapter_uri: str, base_uri: str) -> Any:
    """Wrap `model` with the adapter; any structural mismatch becomes one clear EvaluateError."""
    from peft import PeftModel, get_peft_model_state_dict

    architecture = ",".join(model.config.architectures or [type(model).__name__])
    mismatch = (
        f"adapter {adapter_uri} does not fit base model {base_uri} ({architecture}, "
        f"hidden size {getattr(model.config, 'hidden_size', '?')})"
    )
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as error:
        raise EvaluateError(f"{mismatch}: {error}") from error
    # PEFT only warns when saved weights match no layer; an adapter that silently did not
    # load would make tuned == base, so compare the saved tensors with the loaded ones.
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            saved = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        loaded = {key: tuple(value.shape) for key, value in get_peft_model_state_dict(peft_model).items()}
        unmatched = sorted(set(saved) ^ set(loaded))
        reshaped = sorted(key for key in set(saved) & set(loaded) if saved[key] != loaded[key])
        if unmatched or reshaped:
            raise EvaluateError(
                f"{mismatch}: adapter weights that do not match the model's layers: "
                f"{(unmatched + reshaped)[:5]}"
            )
    peft_model.eval()
    return peft_model


# --- model passes --------------------------------------------------------------------------


def generate_responses(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    config: EvaluateConfig,
    pad_id: int,
    device: str,
    desc: str = "generate",
) -> list[str]:
    """Greedy responses (new tokens only, decoded and stripped), in the order of `records`."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    eos_ids = {tokenizer.eos_token_id} | set(_as_list(getattr(model.generation_config, "eos_token_id", None)))
    eos_ids.discard(None)
    generation = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
    )
    keep_first = int(tokenizer.bos_token_id is not None)
    room = max(config.max_length - config.max_new_tokens, keep_first + 1)
    prompts = [fit_prompt(prompt_ids(tokenizer, record), room, keep_first) for record in records]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    responses: list[str] = [""] * len(records)
    with torch.inference_mode():
        for indices in tqdm(batches, desc=desc, unit="batch", disable=None):
            input_ids, attention = left_pad([prompts[i] for i in indices], pad_id)
            inputs = torch.tensor(input_ids, device=device)
            output = model.generate(
                input_ids=inputs,
                attention_mask=torch.tensor(attention, device=device),
                generation_config=generation,
            )
            for row, index in enumerate(indices):
                new_tokens = cut_at_eos(output[row, inputs.shape[1] :].tolist(), eos_ids)
                responses[index] = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    return responses


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def score(
    model: Any,
    tokenizer: Any,
    examples: list[EncodedExample],
    generation_records: list[Record],
    config: EvaluateConfig,
    pad_id: int,
    device: str,
    name: str,
) -> tuple[ModelScores, list[str], int]:
    """Scores of the model as it is now (adapter on or off), its generations, and the scored token count."""
    loss, tokens = validation_loss(model, examples, config.batch_size, pad_id, device, f"val loss ({name})")
    responses = generate_responses(
        model, tokenizer, generation_records, config, pad_id, device, f"generate ({name})"
    )
    scores = scores_from(loss, responses, [record.response for record in generation_records])
    log.info(
        "%s: val_loss %.4f  exact_match %.3f  token_f1 %.3f  rouge_l %.3f",
        name,
        scores.val_loss,
        scores.exact_match,
        scores.token_f1,
        scores.rouge_l,
    )
    return scores, responses, tokens


# --- the step ------------------------------------------------------------------------------


def _load_tokenizer(directory: Path) -> tuple[Any, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise EvaluateError(f"the tokenizer in {directory} has neither a pad nor an eos token")
    return tokenizer, pad_id


def score_production(
    production: ProductionModel,
    checkpoint: Path,
    val_records: list[Record],
    generation_records: list[Record],
    config: EvaluateConfig,
    device: str,
) -> tuple[ModelScores, list[str]]:
    """Scores of the serving model (a merged checkpoint), on the records base and tuned were scored on.

    Its own tokenizer encodes the records: it is the one it serves with.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, pad_id = _load_tokenizer(checkpoint)
    log.info("loading production model %s v%s from %s", production.name, production.version, checkpoint)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=_dtype(device), device_map=device_map(device, torch.cuda.device_count())
    )
    model.eval()
    examples = [encode_record(tokenizer, record, config.max_length) for record in val_records]
    scores, responses, _ = score(
        model, tokenizer, examples, generation_records, config, pad_id, device, "production"
    )
    return scores, responses


def _localize_production(lookup: ProductionLookup) -> Path | None:
    if lookup.model is None:
        return None
    try:
        return storage.localize_dir(lookup.model.source)
    except Exception as error:  # asked to compare and cannot: that is an error, not a pass
        raise EvaluateError(
            f"cannot read the production model {lookup.model.name} version {lookup.model.version} at "
            f"{lookup.model.source}: {error}"
        ) from error


def evaluate(config: EvaluateConfig, tracker: Tracker = NULL_TRACKER) -> EvaluateResult:
    """Score base and tuned (and the production model, if any) and decide the gate.

    `tracker` is the step's MLflow run (run_step passes it); its tracking server's registry
    is where the production model is looked up.
    """
    storage.check_apart(
        {"output": config.output},
        {
            "base_model": config.base_model,
            "adapter": config.adapter,
            "data": config.data,
            "train_metrics": config.train_metrics,
        },
    )
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = _device(config.device)

    # Every cheap input check runs before the model load, which can take minutes.
    val_records = load_val_records(storage.localize_dir(config.data))
    curves = load_train_curves(config.train_metrics) if config.train_metrics else None
    base_source = resolve_model(config.base_model)  # llmft dir, plain HF checkpoint (path or s3://), hf://
    base_dir = base_source.local_dir
    adapter_dir = storage.localize_dir(config.adapter)
    check_adapter_identity(adapter_dir, config.adapter, base_source)
    lookup = find_production(tracker.tracking_uri, config.registered_model_name, config.production_alias)
    production_dir = _localize_production(lookup)

    # train saves the tokenizer it trained with (pad token included) beside the adapter.
    tokenizer_dir = adapter_dir if any((adapter_dir / f).is_file() for f in _TOKENIZER_FILES) else base_dir
    tokenizer, pad_id = _load_tokenizer(tokenizer_dir)

    dtype = _dtype(device)
    placement = device_map(device, torch.cuda.device_count())
    log.info("loading base model %s (%s on %s)", config.base_model, dtype, placement)
    # device_map loads weights straight onto the GPU, without a full copy in host memory first.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, device_map=placement)
    model.eval()
    log.info("attaching adapter %s", config.adapter)
    model = attach_adapter(model, adapter_dir, config.adapter, config.base_model)

    examples = [encode_record(tokenizer, record, config.max_length) for record in val_records]
    generation_records = val_records[: config.max_eval_records]
    log.info("scoring %d val records (loss) and %d (generation)", len(examples), len(generation_records))

    with model.disable_adapter():
        base, base_out, tokens = score(
            model, tokenizer, examples, generation_records, config, pad_id, device, "base"
        )
    tuned, tuned_out, _ = score(
        model, tokenizer, examples, generation_records, config, pad_id, device, "tuned"
    )

    passed, reasons = decide_gate(base, tuned, config.gate)
    production: ModelScores | None = None
    production_out: list[str] = []
    if lookup.model is not None and production_dir is not None:
        del model  # one model in memory at a time: the production model may be as large
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        production, production_out = score_production(
            lookup.model, production_dir, val_records, generation_records, config, device
        )
        ok, reason = decide_production_gate(tuned, production, config.gate)
        passed, reasons = passed and ok, [*reasons, reason]
    else:
        log.info("%s", lookup.note)
    result = EvaluateResult(
        output=config.output,
        base=base,
        tuned=tuned,
        passed=passed,
        reasons=reasons,
        production=production,
        production_version=lookup.model.version if lookup.model else None,
        production_note=lookup.note,
    )
    generations = [
        {"id": record.id, "prompt": record.prompt, "reference": record.response, "base": b, "tuned": t}
        for record, b, t in zip(generation_records, base_out, tuned_out, strict=True)
    ]
    for line, answer in zip(generations, production_out, strict=False):
        line["production"] = answer
    inputs = {"base_model": config.base_model, "adapter": config.adapter, "data": config.data}
    data_summary = {
        "val_records": len(val_records),
        "val_tokens": tokens,
        "generation_records": len(generations),
    }
    metrics_doc = {
        "base": base.model_dump(),
        "tuned": tuned.model_dump(),
        "production": {
            "compared": production is not None,
            "note": lookup.note,
            "registered_model_name": config.registered_model_name,
            "alias": config.production_alias,
            "version": result.production_version,
            "source": lookup.model.source if lookup.model else None,
            "scores": production.model_dump() if production else None,
        },
        "gate": {"passed": passed, "reasons": reasons, "thresholds": config.gate.model_dump()},
        "data": data_summary,
        "inputs": inputs,
        "base_model_lineage": base_source.lineage(),
        "settings": config.model_dump(include={"max_eval_records", "max_new_tokens", "max_length", "seed"}),
        "device": device,
        "runtime_s": round(time.perf_counter() - started, 3),
    }
    html = render_report(
        result,
        inputs=inputs,
        data=data_summary,
        thresholds=config.gate.model_dump(),
        generations=generations[: config.report_samples],
        curves=curves,
    )
    _publish(config.output, metrics_doc, generations, html, passed)
    log.info("evaluation written to %s\n%s", config.output, result.summary())
    return result


def _publish(
    output: str, metrics_doc: dict[str, Any], generations: list[dict[str, str]], html: str, passed: bool
) -> None:
    if not storage.is_s3(output):
        # An old manifest would mark the directory complete while new files are copied in.
        (Path(output) / storage.MANIFEST_NAME).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        root = Path(staging)
        (root / "metrics.json").write_text(jsonout.dumps(metrics_doc, indent=2), encoding="utf-8")
        with open(root / "generations.jsonl", "w", encoding="utf-8") as handle:
            for line in generations:
                handle.write(jsonout.dumps(line, ensure_ascii=False) + "\n")
        (root / "report.html").write_text(html, encoding="utf-8")
        storage.publish_dir(
            staging,
            output,
            producer=PRODUCER,
            metadata={
                "passed": passed,
                **metrics_doc["base_model_lineage"],
                **{key: metrics_doc["inputs"][key] for key in ("base_model", "adapter", "data")},
            },
        )
