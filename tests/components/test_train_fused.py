"""The fused training path (packing, fused LoRA, fused loss) computes what the plain
transformers + PEFT path computes: the same outputs, loss and gradients on the tiny model
(CPU, float32), and the same training run."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.train.data import IGNORE_INDEX, EncodedExample, collate, encode_record
from components.train.fused_lora import fuse_lora_layers
from components.train.fused_loss import PackedCausalLM, linear_cross_entropy_sum
from components.train.loss import response_loss_sum
from components.train.memory import plan_checkpointing
from components.train.packing import pack, packed_batch, register_packed_attention
from components.train.train import LoraSettings, train
from tests.components.test_train import config_for, make_records

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_model(base: str, attention: str | None, dropout: float = 0.0):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation=attention)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS, task_type="CAUSAL_LM"),
    )
    # LoRA B starts at zero; give it values so the adapter's share of every gradient is tested.
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return peft_model


def lora_gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def examples(tiny_base_model) -> list[EncodedExample]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    return [encode_record(tokenizer, record, 64) for record in make_records(6, 7)]


def test_fused_lora_layers_match_peft_outputs_and_gradients(tiny_base_model, examples) -> None:
    batch = collate(examples, pad_token_id=0)
    results = []
    for fused in (False, True):
        model = lora_model(tiny_base_model, attention=None)
        if fused:
            assert fuse_lora_layers(model) == 2 * 7  # two decoder layers, seven adapted projections each
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = response_loss_sum(logits, batch["labels"])
        loss.backward()
        results.append((logits.detach(), lora_gradients(model)))
    (plain_logits, plain_grads), (fused_logits, fused_grads) = results
    torch.testing.assert_close(fused_logits, plain_logits, atol=1e-5, rtol=1e-5)
    assert plain_grads.keys() == fused_grads.keys() and len(plain_grads) == 2 * 7 * 2
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_lora_applies_dropout_like_peft(tiny_base_model, examples) -> None:
    batch = collate(examples, pad_token_id=0)
    losses = []
    for fused in (False, True):
        model = lora_model(tiny_base_model, attention=None, dropout=0.3)
        if fused:
            fuse_lora_layers(model)
        torch.manual_seed(123)  # the same dropout masks, drawn in the same order
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses.append(response_loss_sum(logits, batch["labels"])[0])
        losses[-1].backward()
        losses.append(lora_gradients(model))
    assert losses[0].item() == pytest.approx(losses[2].item(), rel=1e-5)
    for name, grad in losses[1].items():
        torch.testing.assert_close(losses[3][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_linear_cross_entropy_matches_cross_entropy_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (37,))
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected * 0.5, hidden)
    fused = linear_cross_entropy_sum(
        hidden, weight, targets, chunk_rows=8
    )  # several chunks, a ragged last one
    (fused_grad,) = torch.autograd.grad(fused * 0.5, hidden)
    assert fused.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(fused_grad, expected_grad, atol=1e-6, rtol=1e-5)


def test_linear_cross_entropy_refuses_a_trainable_output_layer() -> None:
    with pytest.raises(ValueError, match="frozen output layer"):
        linear_cross_entropy_sum(
            torch.randn(2, 4), torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1])
        )


def test_pack_keeps_order_and_the_token_budget() -> None:
    lengths = [5, 3, 9, 2, 2, 12, 1]
    examples = [EncodedExample(input_ids=[1] * n, labels=[2] * n) for n in lengths]
    groups = pack(examples, token_budget=10)
    assert [[len(e.input_ids) for e in group] for group in groups] == [[5, 3], [9], [2, 2], [12], [1]]
    assert [e for group in groups for e in group] == examples


def test_packed_batch_targets_never_cross_examples() -> None:
    first = EncodedExample(input_ids=[10, 11, 12], labels=[IGNORE_INDEX, 11, 12])
    second = EncodedExample(input_ids=[20, 21], labels=[IGNORE_INDEX, 21])
    batch = packed_batch([first, second])
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    # Position t predicts token t+1 of its own example; the last token of each predicts nothing.
    assert batch.targets.tolist() == [[11, 12, IGNORE_INDEX, 21, IGNORE_INDEX]]
    assert batch.cu_seq_lens.tolist() == [0, 3, 5] and batch.max_length == 3


def test_packed_loss_and_gradients_equal_the_padded_batch(tiny_base_model, examples) -> None:
    """The whole fused step (packed row, per-example attention, fused LoRA, fused loss) against
    the plain PEFT forward on a right-padded batch of the same examples."""
    padded = collate(examples, pad_token_id=0)
    plain = lora_model(tiny_base_model, attention=None)
    logits = plain(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    plain_loss, tokens = response_loss_sum(logits, padded["labels"])
    plain_loss.backward()

    fused = lora_model(tiny_base_model, attention=register_packed_attention())
    fuse_lora_layers(fused)
    batch = packed_batch(examples)
    assert batch.input_ids.shape[1] < padded["input_ids"].numel()  # no padding in the packed row
    fused_loss = PackedCausalLM(fused)(**vars(batch))
    fused_loss.backward()
    assert tokens == sum(example.response_tokens for example in examples)
    assert fused_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    plain_grads, fused_grads = lora_gradients(plain), lora_gradients(fused)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_training_follows_the_plain_training_run(tiny_base_model, tmp_path) -> None:
    """Same data order, same steps: the fused run's loss curve and adapter match the plain run's."""
    from tests.components.test_train import write_dataset

    data = write_dataset(tmp_path / "data", make_records(24, 3), make_records(6, 4))
    curves, adapters, val_losses = [], [], []
    for fused in (False, True):
        output = tmp_path / f"fused-{fused}"
        config = config_for(
            tiny_base_model,
            data,
            str(output),
            max_steps=6,
            micro_batch_size=3,
            global_batch_size=6,
            save_every_steps=0,
            fused=fused,
            lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        )
        result = train(config)
        curves.append([loss for _, loss in json.loads((output / "metrics.json").read_text())["loss_curve"]])
        adapters.append(load_file(output / "adapter" / "adapter_model.safetensors"))
        val_losses.append(result.val_loss)
    assert len(curves[0]) == 6 and curves[0][-1] < curves[0][0]
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
    assert val_losses[1] == pytest.approx(val_losses[0], rel=1e-4)
    for name, tensor in adapters[0].items():
        torch.testing.assert_close(adapters[1][name], tensor, atol=1e-4, rtol=1e-3, msg=name)


# --- the memory plan -----------------------------------------------------------------------

LLAMA_8B = {"num_layers": 32, "hidden_size": 4096, "intermediate_size": 14336, "bytes_per_value": 2}
H100_BYTES = 79 * 2**30
LLAMA_8B_WEIGHT_BYTES = 8_030_000_000 * 2


def test_memory_plan_checkpoints_nothing_where_the_micro_batch_fits() -> None:
    # Measured on an H100: 8k tokens of the 8B shape took 53.3 GiB without checkpointing.
    plan = plan_checkpointing(
        **LLAMA_8B, tokens_per_micro_batch=8192, weight_bytes=LLAMA_8B_WEIGHT_BYTES, gpu_bytes=H100_BYTES
    )
    assert plan.checkpointed_layers == 0


def test_memory_plan_checkpoints_only_the_layers_that_do_not_fit() -> None:
    plan = plan_checkpointing(
        **LLAMA_8B, tokens_per_micro_batch=16384, weight_bytes=LLAMA_8B_WEIGHT_BYTES, gpu_bytes=H100_BYTES
    )
    assert 0 < plan.checkpointed_layers < 32
    kept = (32 - plan.checkpointed_layers) * plan.activation_bytes_per_layer
    assert kept <= plan.available_bytes < kept + plan.activation_bytes_per_layer


def test_memory_plan_checkpoints_every_layer_when_even_that_is_too_much() -> None:
    plan = plan_checkpointing(
        **LLAMA_8B, tokens_per_micro_batch=65536, weight_bytes=LLAMA_8B_WEIGHT_BYTES, gpu_bytes=24 * 2**30
    )
    assert plan.checkpointed_layers == 32


def test_every_rank_knows_how_many_micro_batches_the_busiest_rank_packs(monkeypatch) -> None:
    """Under FSDP all ranks must run as many forwards: each computes the busiest rank's count itself."""
    from components.train import distributed
    from components.train import train as train_module

    def example(length: int) -> EncodedExample:
        return EncodedExample(input_ids=[1] * length, labels=[2] * length)

    # Two ranks, one micro batch of two sequences each: rank 0's pair overflows the budget of 10.
    group = [[example(8), example(8)], [example(3), example(3)]]
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank, expected in ((0, 2), (1, 1)):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        mine, most = train_module._packed_micro_batches(group, accumulation=1, token_budget=10)
        assert len(mine) == expected and most == 2


def test_a_filler_micro_batch_runs_backward_through_every_adapter(tiny_base_model) -> None:
    """The empty micro batch an FSDP rank runs to keep step with the others: zero loss, and its
    backward still reaches every layer (FSDP reduces each layer's gradients in backward)."""
    model = lora_model(tiny_base_model, attention=register_packed_attention())
    fuse_lora_layers(model)
    loss = PackedCausalLM(model)(**vars(packed_batch([EncodedExample(input_ids=[0], labels=[IGNORE_INDEX])])))
    loss.backward()
    grads = lora_gradients(model)
    assert loss.item() == 0.0 and len(grads) == 2 * 7 * 2
    assert all(float(grad.abs().max()) == 0.0 for grad in grads.values())
