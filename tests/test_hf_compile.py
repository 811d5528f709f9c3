"""Generation with a static cache, under torch.compile and with custom 4D masks equals LlamaForCausalLM's on
the same weights (an all-big Duo model is that Llama model): equal tokens, logits within tolerance."""

from __future__ import annotations

import torch
from transformers import CompileConfig

from duolib import DuoConfig, DuoForCausalLM
from duolib.convert import big_path_to_llama
from tolerances import COMPILED_ATOL, COMPILED_RTOL


def pair():
    torch.manual_seed(0)
    duo = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    return duo, big_path_to_llama(duo).eval()


def generate(model, x, **kw):
    out = model.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0, output_logits=True,
                         return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.logits, 1)


def test_declares_what_transformers_generation_tests_need():
    assert DuoForCausalLM._can_compile_fullgraph and DuoForCausalLM._supports_sdpa


def test_static_cache_and_compiled_generation_equal_llamas():
    duo, llama = pair()
    x = torch.randint(2, 500, (2, 5), generator=torch.Generator().manual_seed(1))
    ref_tokens, ref_logits = generate(llama, x, cache_implementation="static")
    tokens, logits = generate(duo, x, cache_implementation="static")
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=COMPILED_RTOL, atol=COMPILED_ATOL)
    # the cheapest compile mode (the eager backend: dynamo traces the whole graph, no code generation; inductor
    # takes minutes on this CPU), forced on CPU as transformers does on GPUs; fullgraph: no graph break allowed
    compiled = CompileConfig(fullgraph=True, backend="eager")
    compiled._compile_all_devices = True
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    tokens, logits = generate(duo, x, cache_implementation="static", compile_config=compiled)
    assert counters["stats"]["unique_graphs"] >= 1  # decoding ran compiled
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=COMPILED_RTOL, atol=COMPILED_ATOL)


def test_custom_4d_masks_equal_llamas():
    duo, llama = pair()
    x = torch.randint(2, 500, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(8, 8, dtype=torch.bool).tril()[None, None].repeat(2, 1, 1, 1)
    mask[0, :, :, :3] = False  # row 0: its first three tokens are padding
    mask[0, :, torch.arange(3), torch.arange(3)] = True  # padding rows see themselves (no empty softmax)
    mask[1, :, 5:, :5] = False  # row 1: two packed documents (5 + 3 tokens)
    positions = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 0, 1, 2]])
    with torch.no_grad():
        got = duo(x, attention_mask=mask, position_ids=positions).logits
        ref = llama(x, attention_mask=mask, position_ids=positions).logits
        plain = duo(x).logits
    torch.testing.assert_close(got, ref, rtol=COMPILED_RTOL, atol=COMPILED_ATOL)
    assert (got - plain).abs().max() > 1e-3  # the mask changed the result
