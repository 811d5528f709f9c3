"""duolib.utils (shared helpers) and the one random-route rule used by RandomRoutes and training_routes."""

import hashlib
import json

import pytest
import torch

from duolib.routing import BIG, SKIP, SMALL, RandomRoutes, random_route_codes, training_routes
from duolib.utils import batch_source, eval_mode, frozen, json_hash, parts_hash, tensor_hash


def test_frozen_and_eval_mode_restore_flags_and_mode_even_on_errors():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    model[0].bias.requires_grad_(False)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        with frozen(model):
            assert not any(p.requires_grad for p in model.parameters()) and not model.training
            raise RuntimeError("boom")
    assert model.training and model[0].weight.requires_grad and not model[0].bias.requires_grad
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            assert not model.training and model[0].weight.requires_grad
            raise RuntimeError("boom")
    assert model.training
    with frozen(model, freeze=False):
        assert model.training and model[0].weight.requires_grad


def test_hashes_are_the_cache_keys_written_before():
    obj = {"b": [1, 2], "a": "x"}
    assert json_hash(obj) == hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    assert parts_hash(b"ab", obj) == parts_hash(b"ab", {"a": "x", "b": [1, 2]}) != parts_hash(b"ac", obj)
    assert len(parts_hash(obj)) == 16
    t = torch.arange(6).view(2, 3)
    assert tensor_hash(t.t()) == tensor_hash(t.t().contiguous()) != tensor_hash(t)


def test_batch_source_accepts_functions_tensors_and_iterables():
    b = torch.arange(6).view(2, 3)
    assert torch.equal(batch_source(b)(5), b)
    stack = torch.stack([b, b + 1])
    assert torch.equal(batch_source(stack)(3), b + 1)
    src = batch_source([b, b + 2])
    assert [int(src(i)[0, 0]) for i in range(3)] == [0, 2, 0]  # an iterable restarts when exhausted
    with pytest.raises(ValueError, match=r"\[B, T\] or \[N, B, T\]"):
        batch_source(torch.zeros(2))


def test_one_random_route_rule():
    u = torch.tensor([0.0, 0.29, 0.3, 0.49, 0.5, 0.99])
    assert random_route_codes(u, 0.3, 0.2).tolist() == [BIG, BIG, SKIP, SKIP, SMALL, SMALL]
    g = torch.Generator().manual_seed(3)
    policy = RandomRoutes(0.3, 0.2, generator=torch.Generator().manual_seed(3))
    x = torch.zeros(2, 5, 4)
    assert torch.equal(policy.route_layer(0, x, None), random_route_codes(torch.rand((2, 5), generator=g), 0.3, 0.2))
    routes = training_routes(0, 1, range(3), 50, 4, p_big=0.5, p_skip=0.25)
    assert routes.shape == (3, 50, 4)
    assert set(routes.unique().tolist()) == {SKIP, SMALL, BIG}


def test_cpu_description_names_the_model_and_the_vector_units(tmp_path):
    from duolib.utils import cpu_description

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_bf16 sse\n\n"
                    "processor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_bf16 sse\n")
    text = cpu_description(info, environ={})
    assert text.startswith("Some Xeon (") and "AMX-BF16, AVX-512, AVX2)" in text and text.endswith(" cores")
    limited = cpu_description(info, environ={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "PATH": "/"})
    assert limited == text + ", kernels limited by ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2"
    info.write_text("model name\t: Some EPYC\nflags\t\t: fpu avx2\n")
    assert "Some EPYC (" in cpu_description(info, environ={}) and "AVX-512" not in cpu_description(info, environ={})
    assert cpu_description(tmp_path / "missing", environ={}).endswith(" cores")  # no cpuinfo: platform's names


def test_amx_is_usable_only_where_the_cpu_has_it_and_onednn_may_use_it(tmp_path):
    from duolib.utils import amx_usable, kernel_limits

    xeon, epyc = tmp_path / "xeon", tmp_path / "epyc"
    xeon.write_text("model name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_bf16\n")
    epyc.write_text("model name\t: Some EPYC\nflags\t\t: fpu avx2 avx512f\n")
    assert amx_usable(xeon, environ={}) and not amx_usable(epyc, environ={})
    assert amx_usable(xeon, environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})
    assert amx_usable(xeon, environ={"ONEDNN_MAX_CPU_ISA": "all"})
    assert not amx_usable(xeon, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not amx_usable(xeon, environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    assert kernel_limits({"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "", "HOME": "/"}) == \
        {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
