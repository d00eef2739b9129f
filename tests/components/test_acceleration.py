"""use_liger_kernels keeps Liger's module-level swaps from reaching models built later.

liger-kernel needs Triton and a GPU, so here it is stood in for by a module that makes the
same module-level swaps liger-kernel 0.8.5 makes for Llama (the rotary function, the RMSNorm
and MLP classes) and marks the instance; the real kernels run in the GPU tests
(`pytest -m gpu`: a CPU evaluation after GPU training in one process).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from components.train.acceleration import use_liger_kernels

KERNEL_CALLS: list[str] = []


def _kernel_rotary(query, key, cos, sin, position_ids=None, unsqueeze_dim=1):
    KERNEL_CALLS.append("rope")
    return query, key


class _KernelNorm(torch.nn.Module):
    pass


class _KernelMLP(torch.nn.Module):
    pass


def _apply_to_instance(model, rope, rms_norm, swiglu, cross_entropy, fused_linear_cross_entropy):
    if rope:
        modeling_llama.apply_rotary_pos_emb = _kernel_rotary
    if rms_norm:
        modeling_llama.LlamaRMSNorm = _KernelNorm
    if swiglu:
        modeling_llama.LlamaMLP = _KernelMLP
    model.patched_by_kernels = True


@pytest.fixture
def stand_in_liger(monkeypatch):
    package = types.ModuleType("liger_kernel")
    transformers_module = types.ModuleType("liger_kernel.transformers")
    transformers_module._apply_liger_kernel_to_instance = _apply_to_instance
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers_module)
    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):  # put back after the test
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    KERNEL_CALLS.clear()


def _tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def test_classes_are_put_back_and_rotary_uses_the_kernel_on_cuda_only(stand_in_liger):
    rotary = modeling_llama.apply_rotary_pos_emb
    norm, mlp = modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP
    model = _tiny_llama()

    assert use_liger_kernels(model)

    assert model.patched_by_kernels
    assert modeling_llama.LlamaRMSNorm is norm and modeling_llama.LlamaMLP is mlp
    later = _tiny_llama()  # a model built afterwards, e.g. for a CPU evaluation, is plain transformers
    assert type(later.model.norm) is norm and type(later.model.layers[0].mlp) is mlp

    query, key = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    cos, sin = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    expected = rotary(query, key, cos, sin)
    got = modeling_llama.apply_rotary_pos_emb(query, key, cos, sin)
    assert KERNEL_CALLS == []  # CPU tensors: transformers' own function
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))

    cuda_query = types.SimpleNamespace(is_cuda=True)
    assert modeling_llama.apply_rotary_pos_emb(cuda_query, key, cos, sin)[0] is cuda_query
    assert KERNEL_CALLS == ["rope"]


def test_patching_twice_wraps_transformers_function_once(stand_in_liger):
    rotary = modeling_llama.apply_rotary_pos_emb
    use_liger_kernels(_tiny_llama())
    use_liger_kernels(_tiny_llama())
    assert modeling_llama.apply_rotary_pos_emb.transformers_rotary is rotary


def test_without_liger_it_says_so_and_changes_nothing(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import fails
    rotary = modeling_llama.apply_rotary_pos_emb
    assert not use_liger_kernels(_tiny_llama())
    assert "liger-kernel is not installed" in caplog.text
    assert modeling_llama.apply_rotary_pos_emb is rotary
