"""Tests of the evaluate step: metrics, gate, report, and an end-to-end run on the tiny model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from components import storage
from components.evaluate import metrics
from components.evaluate.evaluate import (
    EvaluateConfig,
    EvaluateError,
    EvaluateResult,
    GateThresholds,
    ModelScores,
    cut_at_eos,
    decide_gate,
    decide_production_gate,
    evaluate,
    fit_prompt,
    left_pad,
    parse_train_curves,
)
from components.evaluate.report import loss_curve_svg, render_report
from components.records import Record, write_records
from components.sample.dataset import SAMPLE_PATH

# --- metrics -----------------------------------------------------------------------------


def test_normalize_lowercases_strips_punctuation_and_whitespace():
    assert metrics.normalize("  The  Answer!\n") == "the answer"
    assert metrics.normalize("yes,no") == "yes no"
    assert metrics.normalize("«Déjà vu»…") == "déjà vu"
    assert metrics.normalize(" ?! ") == ""


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Positive.", "positive", 1.0),
        ("  POSITIVE ", "positive", 1.0),
        ("positive!", "negative", 0.0),
        ("the food", "food", 0.0),
        ("", "", 1.0),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert metrics.exact_match(prediction, reference) == expected


def test_token_f1_known_values():
    # 3 shared tokens; precision 3/3, recall 3/6.
    assert metrics.token_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # Tokens count as a multiset: one "the" predicted twice matches only once.
    assert metrics.token_f1("the the", "the cat") == pytest.approx(0.5)
    assert metrics.token_f1("dog", "cat") == 0.0
    assert metrics.token_f1("", "cat") == 0.0
    assert metrics.token_f1("", "") == 1.0
    assert metrics.token_f1("Cat.", "cat") == 1.0


def test_rouge_l_known_values():
    assert metrics.lcs_length(["a", "b", "c", "d"], ["a", "c", "b", "d"]) == 3
    assert metrics.lcs_length("abcbdab", "bdcaba") == 4  # the textbook example
    # LCS 3 of 4 tokens each way: P = R = 0.75.
    assert metrics.rouge_l("a b c d", "a c b d") == pytest.approx(0.75)
    # Word order matters for ROUGE-L but not for token F1.
    assert metrics.rouge_l("mat the on sat cat the", "the cat sat on the mat") == pytest.approx(0.5)
    assert metrics.token_f1("mat the on sat cat the", "the cat sat on the mat") == 1.0
    # LCS 4 ("police killed the gunman"): P = 4/4, R = 4/5.
    assert metrics.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    assert metrics.rouge_l("the police killed the gunman", "police killed the gunman") == pytest.approx(8 / 9)
    assert metrics.rouge_l("", "") == 1.0
    assert metrics.rouge_l("x", "") == 0.0


def test_perplexity_is_exp_of_loss():
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(2.5) == pytest.approx(math.exp(2.5))
    assert metrics.perplexity(1e6) == math.inf
    assert math.isnan(metrics.perplexity(math.nan))


def test_text_scores_average_over_pairs():
    scores = metrics.text_scores(["positive", "food", "nope"], ["positive", "Food.", "music"])
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["token_f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        metrics.text_scores(["a"], ["a", "b"])


# --- generation helpers --------------------------------------------------------------------


def test_fit_prompt_keeps_bos_and_the_end():
    assert fit_prompt([1, 2, 3], room=5, keep_first=1) == [1, 2, 3]
    assert fit_prompt([1, 2, 3, 4, 5, 6], room=4, keep_first=1) == [1, 4, 5, 6]
    assert fit_prompt([2, 3, 4, 5], room=2, keep_first=0) == [4, 5]


def test_left_pad_and_cut_at_eos():
    ids, attention = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids == [[5, 6, 7], [0, 0, 8]]
    assert attention == [[1, 1, 1], [0, 0, 1]]
    assert cut_at_eos([4, 5, 2, 9], {2}) == [4, 5]
    assert cut_at_eos([4, 5], {2}) == [4, 5]


# --- gate ----------------------------------------------------------------------------------


def _scores(exact_match: float, val_loss: float = 1.0) -> ModelScores:
    return ModelScores(
        val_loss=val_loss,
        perplexity=math.exp(val_loss),
        exact_match=exact_match,
        token_f1=exact_match,
        rouge_l=exact_match,
        samples=8,
    )


GAIN_5 = GateThresholds(min_exact_match_gain=0.05)


def test_gate_default_asks_the_tuned_model_not_to_lose_to_the_base():
    assert decide_gate(_scores(0.5), _scores(0.5), GateThresholds())[0]
    passed, reasons = decide_gate(_scores(0.5), _scores(0.48), GateThresholds())
    assert not passed
    assert reasons[0] == "exact_match gain -0.020 < 0.000 (required >= 0.000)"


def test_gate_passes_with_reasons_for_every_threshold():
    passed, reasons = decide_gate(_scores(0.0), _scores(0.62), GAIN_5)
    assert passed
    assert reasons == ["exact_match gain 0.620 >= 0.050", "tuned exact_match 0.620 >= 0.000"]


def test_gate_fails_on_too_small_a_gain():
    passed, reasons = decide_gate(_scores(0.5), _scores(0.52), GAIN_5)
    assert not passed
    assert reasons[0] == "exact_match gain 0.020 < 0.050 (required >= 0.050)"


def test_gate_gain_at_the_threshold_passes_despite_float_rounding():
    assert 0.30 - 0.25 < 0.05  # the float arithmetic the tolerance is for
    passed, _ = decide_gate(_scores(0.25), _scores(0.30), GAIN_5)
    assert passed


def test_gate_min_tuned_exact_match():
    passed, reasons = decide_gate(_scores(0.0), _scores(0.3), GateThresholds(min_tuned_exact_match=0.5))
    assert not passed
    assert reasons[1] == "tuned exact_match 0.300 < 0.500 (required >= 0.500)"


def test_gate_max_val_loss():
    thresholds = GateThresholds(max_val_loss=2.0)
    passed, reasons = decide_gate(_scores(0.0, 7.0), _scores(0.9, 1.5), thresholds)
    assert passed
    assert reasons[-1] == "tuned val_loss 1.5000 <= 2.0000"
    passed, reasons = decide_gate(_scores(0.0, 7.0), _scores(0.9, 2.5), thresholds)
    assert not passed
    assert reasons[-1] == "tuned val_loss 2.5000 > 2.0000 (required <= 2.0000)"
    # Every threshold is reported, including those that passed.
    assert reasons[0].startswith("exact_match gain 0.900 >=")
    passed, _ = decide_gate(_scores(0.0, 7.0), _scores(0.9, math.nan), thresholds)
    assert not passed  # diverged training never passes a loss threshold


def test_summary_table_and_gate_line():
    passed, reasons = decide_gate(_scores(0.0, 7.5), _scores(0.625, 1.5), GAIN_5)
    result = EvaluateResult(
        output="out", base=_scores(0.0, 7.5), tuned=_scores(0.625, 1.5), passed=passed, reasons=reasons
    )
    lines = result.summary().splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "delta"]
    assert [line.split()[0] for line in lines[1:6]] == [
        "val_loss",
        "perplexity",
        "exact_match",
        "token_f1",
        "rouge_l",
    ]
    assert len({len(line) for line in lines[:6]}) == 1  # aligned columns
    assert lines[-1] == "gate: PASSED (exact_match gain 0.625 >= 0.050; tuned exact_match 0.625 >= 0.000)"


def test_production_gate_allows_the_tolerance_and_no_more():
    thresholds = GateThresholds(max_regression=0.05)
    assert decide_production_gate(_scores(0.55), _scores(0.6), thresholds) == (
        True,
        "tuned exact_match vs production -0.050 >= -0.050",
    )
    ok, reason = decide_production_gate(_scores(0.5), _scores(0.6), thresholds)
    assert not ok and reason == "tuned exact_match vs production -0.100 < -0.050 (required >= -0.050)"
    ok, _ = decide_production_gate(_scores(0.5), _scores(0.6), GateThresholds(regression_metric="token_f1"))
    assert not ok  # default tolerance 0: no worse at all


def test_summary_shows_the_production_column_and_note():
    result = EvaluateResult(
        output="out",
        base=_scores(0.0),
        tuned=_scores(0.5),
        passed=True,
        reasons=["ok"],
        production=_scores(0.25),
        production_version="3",
        production_note="compared with m version 3 (production)",
    )
    lines = result.summary().splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "delta", "production"]
    assert lines[3].split()[-1] == "0.2500"
    assert lines[-2] == "production: compared with m version 3 (production)"
    assert lines[-1] == "gate: PASSED (ok)"
    html = render_report(result, inputs={}, data={}, thresholds={}, generations=[], curves=None)
    assert "<th>production</th>" in html and "compared with m version 3" in html


# --- report --------------------------------------------------------------------------------


def test_report_escapes_generations_and_is_self_contained():
    result = EvaluateResult(
        output="out",
        base=_scores(0.0),
        tuned=_scores(0.1),
        passed=False,
        reasons=["exact_match gain 0.100 < 0.500 (required >= 0.500)"],
    )
    generations = [
        {
            "prompt": "<script>alert('x')</script> & more",
            "reference": "a<b",
            "base": "</td>",
            "tuned": '"quoted"',
        }
    ]
    html = render_report(
        result,
        inputs={"base_model": "s3://b/<m>"},
        data={"val_records": 1},
        thresholds=GateThresholds().model_dump(),
        generations=generations,
        curves=None,
    )
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert "a&lt;b" in html and "&lt;/td&gt;" in html and "s3://b/&lt;m&gt;" in html
    assert "&lt; 0.500 (required &gt;= 0.500)" in html
    assert "gate FAILED" in html
    assert "no loss curve" in html
    # Nothing is fetched from elsewhere: the KFP UI shows it in a sandbox.
    assert "src=" not in html and "href=" not in html and "@import" not in html


def test_loss_curve_svg_plots_finite_points():
    svg = loss_curve_svg(
        {"loss_curve": [(1, 6.0), (2, 4.0), (3, math.nan), (4, 2.0)], "eval_curve": [(4, 2.5)]}
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 1  # a single validation point is a marker, not a line
    assert "train loss" in svg and "validation loss" in svg
    assert "nan" not in svg
    assert "no finite loss" in loss_curve_svg({"loss_curve": [(1, math.nan)]})


def test_parse_train_curves():
    curves = parse_train_curves(
        {"loss_curve": [[1, 2.0], [2, 1.5]], "eval_curve": [[2, 1.7]], "steps": 2}, "m"
    )
    assert curves == {"loss_curve": [(1.0, 2.0), (2.0, 1.5)], "eval_curve": [(2.0, 1.7)]}
    with pytest.raises(EvaluateError, match="pairs"):
        parse_train_curves({"loss_curve": [1, 2]}, "m")
    with pytest.raises(EvaluateError, match="neither"):
        parse_train_curves({"steps": 2}, "m")


# --- end to end on the tiny model ----------------------------------------------------------


def _sample_records(count: int) -> list[Record]:
    """The first records of the shipped sample, in canonical form (what curate would write)."""
    records = []
    for index, line in enumerate(SAMPLE_PATH.read_text(encoding="utf-8").splitlines()[:count]):
        item = json.loads(line)
        if "messages" in item:
            prompt, response = item["messages"][0]["content"], item["messages"][1]["content"]
        else:
            prompt, response = (
                item.get("input", item.get("prompt")),
                item.get("output", item.get("completion")),
            )
        records.append(
            Record(id=f"val-{index}", prompt=prompt, response=response, source="sample", line=index + 1)
        )
    return records


def _publish_data(directory: Path, records: list[Record] | None) -> str:
    directory.mkdir(parents=True)
    if records is not None:
        write_records(directory / "val.jsonl", records)
    storage.publish_dir(directory, str(directory), producer="test")
    return str(directory)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, str]:
    """A tiny base model, 8 val records, and a LoRA adapter trained a few steps on them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.sample.tiny_model import TinyModelConfig, build_tiny_model
    from components.train.data import collate, encode_record

    root = tmp_path_factory.mktemp("evaluate")
    base = str(root / "base")
    build_tiny_model(TinyModelConfig(output=base))
    records = _sample_records(8)
    data = _publish_data(root / "data", records)

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    batch = collate([encode_record(tokenizer, record, 128) for record in records], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    curve = []
    for step in range(1, 41):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        curve.append([step, loss.item()])
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    storage.publish_dir(adapter, str(adapter), producer="test", metadata={"base_model": base})
    train_metrics = root / "train_metrics.json"
    train_metrics.write_text(json.dumps({"loss_curve": curve, "eval_curve": [[40, curve[-1][1]]]}))
    return {
        "root": str(root),
        "base": base,
        "data": data,
        "adapter": str(adapter),
        "train_metrics": str(train_metrics),
    }


def test_evaluate_end_to_end(workspace):
    output = Path(workspace["root"]) / "eval"
    config = EvaluateConfig(
        base_model=workspace["base"],
        adapter=workspace["adapter"],
        data=workspace["data"],
        output=str(output),
        max_new_tokens=4,
        batch_size=3,
        train_metrics=workspace["train_metrics"],
        gate=GateThresholds(max_val_loss=5.0),
    )
    result = evaluate(config)

    manifest = storage.require_complete(str(output))
    assert {entry.path for entry in manifest.files} == {"metrics.json", "report.html", "generations.jsonl"}
    assert manifest.producer == "llmft.evaluate"
    document = json.loads((output / "metrics.json").read_text())
    for side in ("base", "tuned"):
        scores = getattr(result, side)
        assert document[side] == scores.model_dump()
        assert all(math.isfinite(getattr(scores, name)) for name in ("val_loss", "perplexity"))
        assert scores.perplexity == pytest.approx(math.exp(scores.val_loss))
        assert scores.samples == 8
    assert result.tuned.val_loss < result.base.val_loss  # the adapter learned the records
    assert result.tuned.exact_match > result.base.exact_match

    gate = document["gate"]
    assert gate["thresholds"] == config.gate.model_dump()
    expected = result.tuned.exact_match - result.base.exact_match >= 0.05 and result.tuned.val_loss <= 5.0
    assert gate["passed"] is result.passed is expected
    assert gate["reasons"] == result.reasons and len(result.reasons) == 3
    assert result.summary().endswith(
        f"gate: {'PASSED' if result.passed else 'FAILED'} ({'; '.join(result.reasons)})"
    )

    generations = [json.loads(line) for line in (output / "generations.jsonl").read_text().splitlines()]
    assert [g["id"] for g in generations] == [f"val-{i}" for i in range(8)]
    assert set(generations[0]) == {"id", "prompt", "reference", "base", "tuned"}
    em = sum(metrics.exact_match(g["tuned"], g["reference"]) for g in generations) / 8
    assert em == pytest.approx(result.tuned.exact_match)

    html = (output / "report.html").read_text()
    assert "<svg" in html and "<polyline" in html
    assert "gate PASSED" in html if result.passed else "gate FAILED" in html


def test_evaluate_scores_do_not_depend_on_batch_size(workspace):
    """Loss is weighted per token, and left padding must not change greedy output."""
    root = Path(workspace["root"])
    common = {
        "base_model": workspace["base"],
        "adapter": workspace["adapter"],
        "data": workspace["data"],
        "max_new_tokens": 4,
        "max_eval_records": 5,
    }
    one = evaluate(EvaluateConfig(output=str(root / "b1"), batch_size=1, **common))
    many = evaluate(EvaluateConfig(output=str(root / "b8"), batch_size=8, **common))
    assert one.tuned.val_loss == pytest.approx(many.tuned.val_loss, rel=1e-5)
    assert one.base.val_loss == pytest.approx(many.base.val_loss, rel=1e-5)
    assert one.tuned.exact_match == many.tuned.exact_match
    assert one.tuned.samples == 5


def test_missing_or_empty_val_is_a_clear_error(workspace, tmp_path):
    common = {
        "base_model": workspace["base"],
        "adapter": workspace["adapter"],
        "output": str(tmp_path / "out"),
    }
    no_val = _publish_data(tmp_path / "no_val", None)
    with pytest.raises(EvaluateError, match=r"no_val/val\.jsonl not found"):
        evaluate(EvaluateConfig(data=no_val, **common))
    empty = _publish_data(tmp_path / "empty", [])
    with pytest.raises(EvaluateError, match=r"empty/val\.jsonl holds no records"):
        evaluate(EvaluateConfig(data=empty, **common))


def test_directory_without_manifest_is_refused(workspace, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(workspace["adapter"], unfinished)
    (unfinished / storage.MANIFEST_NAME).unlink()
    with pytest.raises(storage.IncompleteDirectoryError, match=r"no _MANIFEST\.json"):
        evaluate(
            EvaluateConfig(
                base_model=workspace["base"],
                adapter=str(unfinished),
                data=workspace["data"],
                output=str(tmp_path / "out"),
            )
        )


def test_adapter_of_another_base_model_is_refused(workspace, tmp_path):
    from components.sample.tiny_model import TinyModelConfig, build_tiny_model

    # Same architecture, other weights: the adapter's recorded base differs in content.
    other = str(tmp_path / "other")
    build_tiny_model(TinyModelConfig(output=other, seed=1))
    with pytest.raises(EvaluateError, match=r"was trained on base model .* whose content differs"):
        evaluate(
            EvaluateConfig(
                base_model=other,
                adapter=workspace["adapter"],
                data=workspace["data"],
                output=str(tmp_path / "out"),
            )
        )

    # Another architecture, and an adapter whose recorded base cannot be resolved: the
    # layer shapes decide.
    narrow = str(tmp_path / "narrow")
    build_tiny_model(TinyModelConfig(output=narrow, hidden_size=32, intermediate_size=64))
    anonymous = tmp_path / "anonymous"
    shutil.copytree(workspace["adapter"], anonymous)
    (anonymous / storage.MANIFEST_NAME).unlink()
    adapter_config = json.loads((anonymous / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "some-org/unknown-model"
    (anonymous / "adapter_config.json").write_text(json.dumps(adapter_config))
    storage.publish_dir(anonymous, str(anonymous), producer="test")
    with pytest.raises(EvaluateError, match=r"does not fit base model .*LlamaForCausalLM, hidden size 32"):
        evaluate(
            EvaluateConfig(
                base_model=narrow,
                adapter=str(anonymous),
                data=workspace["data"],
                output=str(tmp_path / "out"),
            )
        )


# --- the production model, through the registry of a real MLflow server -------------------------


def _untrained_adapter(workspace: dict[str, str], directory: Path) -> str:
    """A LoRA adapter whose B matrices are zero: the tuned model is the base model, a clear regression."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(workspace["base"]),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(workspace["adapter"]).save_pretrained(directory)
    storage.publish_dir(
        directory, str(directory), producer="test", metadata={"base_model": workspace["base"]}
    )
    return str(directory)


@pytest.fixture
def production(workspace, mlflow_server, s3_bucket):
    """The well-trained adapter merged by export onto S3, registered, and holding the production alias."""
    import uuid

    from mlflow import MlflowClient

    from components.export.export import ExportConfig, export

    checkpoint = s3_bucket.uri("runs", "1", "export")
    export(ExportConfig(base_model=workspace["base"], adapter=workspace["adapter"], output=checkpoint))
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    name = f"support-bot-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=checkpoint).version
    client.set_registered_model_alias(name, "production", version)
    return {"name": name, "version": str(version), "source": checkpoint, "uri": mlflow_server}


def _run(config: EvaluateConfig, tracking_uri: str | None) -> EvaluateResult:
    from components import tracking

    result, _ = tracking.run_step("evaluate", evaluate, config, tracking_uri, "evaluate-tests")
    return result


def test_a_regression_against_production_fails_the_gate(workspace, production, tmp_path):
    output = tmp_path / "eval"
    config = EvaluateConfig(
        base_model=workspace["base"],
        adapter=_untrained_adapter(workspace, tmp_path / "untrained"),
        data=workspace["data"],
        output=str(output),
        max_new_tokens=4,
        gate=GateThresholds(min_exact_match_gain=0.0),  # only the production check can fail
        registered_model_name=production["name"],
    )
    result = _run(config, production["uri"])

    assert result.production is not None and result.production_version == production["version"]
    assert result.production.exact_match > result.tuned.exact_match  # the served model is better
    assert result.tuned.exact_match == result.base.exact_match  # B = 0: the tuned model is the base
    assert not result.passed
    assert result.reasons[-1].startswith("tuned exact_match vs production -")
    assert "(required >= -0.000)" in result.reasons[-1]
    assert (
        result.production_note
        == f"compared with {production['name']} version {production['version']} (production)"
    )

    document = json.loads((output / "metrics.json").read_text())
    assert document["production"] == {
        "compared": True,
        "note": result.production_note,
        "registered_model_name": production["name"],
        "alias": "production",
        "version": production["version"],
        "source": production["source"],
        "scores": result.production.model_dump(),
    }
    generations = [json.loads(line) for line in (output / "generations.jsonl").read_text().splitlines()]
    assert all("production" in line for line in generations)
    em = sum(metrics.exact_match(g["production"], g["reference"]) for g in generations) / len(generations)
    assert em == pytest.approx(result.production.exact_match)
    assert "<th>production</th>" in (output / "report.html").read_text()

    # Within a tolerance as large as the gap, the same candidate passes.
    gap = result.production.exact_match - result.tuned.exact_match
    tolerant = config.model_copy(
        update={"gate": GateThresholds(min_exact_match_gain=0.0, max_regression=gap)}
    )
    assert _run(tolerant.model_copy(update={"output": str(tmp_path / "eval2")}), production["uri"]).passed


def test_the_tuned_model_may_replace_an_equal_production_model(workspace, production, tmp_path):
    config = EvaluateConfig(
        base_model=workspace["base"],
        adapter=workspace["adapter"],
        data=workspace["data"],
        output=str(tmp_path / "eval"),
        max_new_tokens=4,
        registered_model_name=production["name"],
    )
    result = _run(config, production["uri"])
    # The production model is this very adapter, merged: the same answers.
    assert result.production.exact_match == result.tuned.exact_match
    assert result.production.val_loss == pytest.approx(result.tuned.val_loss, rel=1e-4)
    assert result.passed and result.reasons[-1].startswith("tuned exact_match vs production 0.000 >=")


def test_no_production_model_is_reported_and_does_not_block(workspace, mlflow_server, tmp_path):
    common = {
        "base_model": workspace["base"],
        "adapter": workspace["adapter"],
        "data": workspace["data"],
        "max_new_tokens": 4,
    }
    unknown = EvaluateConfig(output=str(tmp_path / "a"), registered_model_name="never-registered", **common)
    result = _run(unknown, mlflow_server)
    assert result.production is None and result.passed
    assert (
        "no version of registered model 'never-registered' holds alias 'production'" in result.production_note
    )
    assert len(result.reasons) == 2  # no production check
    report = (tmp_path / "a" / "report.html").read_text()
    assert "nothing has been promoted yet" in report
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["production"]["compared"] is False

    untracked = evaluate(EvaluateConfig(output=str(tmp_path / "b"), registered_model_name="m", **common))
    assert untracked.production is None and "MLflow tracking is off" in untracked.production_note


def test_unreadable_production_model_is_an_error(workspace, production, s3_bucket, tmp_path):
    storage.remove_dir(production["source"])
    config = EvaluateConfig(
        base_model=workspace["base"],
        adapter=workspace["adapter"],
        data=workspace["data"],
        output=str(tmp_path / "eval"),
        registered_model_name=production["name"],
    )
    with pytest.raises(
        EvaluateError, match=f"cannot read the production model {production['name']} version 1"
    ):
        _run(config, production["uri"])


@pytest.mark.gpu
@pytest.mark.gpu
def test_evaluate_on_cuda_agrees_with_cpu(workspace):
    """bf16 on the GPU, float32 on the CPU: the same adapter must score about the same."""
    import torch

    assert torch.cuda.is_available(), "gpu tests run on a CUDA machine: pytest -m gpu"
    root = Path(workspace["root"])
    common = {
        "base_model": workspace["base"],
        "adapter": workspace["adapter"],
        "data": workspace["data"],
        "max_new_tokens": 4,
    }
    cpu = evaluate(EvaluateConfig(output=str(root / "cpu"), device="cpu", **common))
    gpu = evaluate(EvaluateConfig(output=str(root / "gpu"), device="cuda", **common))
    assert json.loads((root / "gpu" / "metrics.json").read_text())["device"] == "cuda"
    assert gpu.base.val_loss == pytest.approx(cpu.base.val_loss, rel=0.05)
    assert gpu.tuned.val_loss == pytest.approx(cpu.tuned.val_loss, rel=0.05)
    assert gpu.tuned.val_loss < gpu.base.val_loss
    assert gpu.tuned.exact_match > gpu.base.exact_match
