"""`--param NAME=VALUE` is typed by the pipeline's own declaration, the same way for
`llmft local`, `submit` and `schedule` (pipelines/client.py); bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.client import ClientInputError, check_parameters, parse_overrides

SPEC = {
    "root": {
        "inputDefinitions": {
            "parameters": {
                "epochs": {"parameterType": "NUMBER_INTEGER", "defaultValue": 3},
                "learning_rate": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 2e-4},
                "fused": {"parameterType": "BOOLEAN", "defaultValue": True},
                "tag": {"parameterType": "STRING", "defaultValue": ""},
                "targets": {"parameterType": "LIST", "isOptional": True},
                "extra": {"parameterType": "STRUCT", "isOptional": True},
            }
        }
    }
}


def typed(*pairs: str) -> dict:
    return check_parameters(SPEC, parse_overrides(list(pairs)))


def test_each_declared_type_is_parsed_from_text():
    params = typed(
        "epochs=2",
        "learning_rate=1e-4",
        "fused=false",
        "tag=1.10",
        "targets=[q_proj, v_proj]",
        "extra={a: 1}",
    )
    assert params == {
        "epochs": 2,
        "learning_rate": 1e-4,
        "fused": False,
        "tag": "1.10",
        "targets": ["q_proj", "v_proj"],
        "extra": {"a": 1},
    }
    assert type(params["learning_rate"]) is float and type(params["epochs"]) is int
    assert type(typed("learning_rate=1")["learning_rate"]) is float


@pytest.mark.parametrize(
    ("pair", "named"),
    [
        ("epochs=2.5", "'epochs' takes an integer"),
        ("epochs=many", "'epochs' takes an integer"),
        ("learning_rate=fast", "'learning_rate' takes a number"),
        ("fused=maybe", "'fused' takes true or false"),
        ("targets=q_proj", "'targets' takes a list"),
        ("extra=[1]", "'extra' takes a mapping"),
        ("epoch=2", "unknown pipeline parameter(s): epoch"),
        ("epochs", "expected KEY=VALUE"),
    ],
)
def test_bad_names_and_values_name_the_parameter_and_type(pair, named):
    with pytest.raises(ClientInputError) as error:
        typed(pair)
    assert named in str(error.value)


def test_local_types_its_parameters_from_the_pipeline(tmp_path):
    from components.resources import load_profiles
    from pipelines.llm_finetune import build_pipeline
    from pipelines.local import local_parameters, pipeline_spec

    spec = pipeline_spec(build_pipeline(load_profiles(None, preset="cpu"), network_retries=0))
    params = local_parameters(
        spec, tmp_path, None, "", parse_overrides(["learning_rate=1e-4", "epochs=2", "lora_r=4"])
    )
    assert params["learning_rate"] == 1e-4 and type(params["learning_rate"]) is float
    assert params["epochs"] == 2.0 and type(params["epochs"]) is float  # the pipeline declares a float
    assert params["lora_r"] == 4 and type(params["lora_r"]) is int
    with pytest.raises(ClientInputError, match="'lora_r' takes an integer"):
        local_parameters(spec, tmp_path, None, "", parse_overrides(["lora_r=four"]))


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("learning_rate=fast", "parameter 'learning_rate' takes a number"),
        ("learning_rte=1e-4", "unknown pipeline parameter(s): learning_rte"),
    ],
)
def test_local_refuses_bad_parameters_with_exit_2_before_running(tmp_path: Path, capsys, pair, message):
    workdir = tmp_path / "run"
    exit_code = main(["local", "--workdir", str(workdir), "--param", pair])
    err = capsys.readouterr().err
    assert exit_code == 2
    assert message in err and "Traceback" not in err
    assert not workdir.exists()  # nothing was built or run
