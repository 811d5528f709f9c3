"""Development script: run transformers' own common model tests against Duo and against Llama, and
compare the outcomes test by test.

Nothing of transformers' test code enters the repository.  The script

1. downloads the transformers source distribution of the installed version from PyPI
   (``pip download --no-deps --no-binary :all: transformers==X``) into ``--workdir``;
2. extracts its common test mixins (``tests/test_modeling_common.py``, ``tests/test_configuration_common.py``)
   there.  The sdist does not ship ``tests/generation/test_utils.py`` (``GenerationTesterMixin``),
   ``tests/exporters/``, ``tests/utils/test_configuration_utils.py`` or ``tests/models/``: those imports
   get empty stand-ins, so generation and export tests do not run here, and the Llama set-up
   (``tests/models/llama/test_modeling_llama.py`` + ``tests/causal_lm_tester.py``) is rebuilt below with
   the same tester sizes for both models;
3. installs the test-only dependency ``parameterized`` into ``--workdir/deps`` (``pip install --target``):
   duolib's own environment is left untouched;
4. runs ``ModelTesterMixin`` and ``ConfigTester`` for (LlamaModel, LlamaForCausalLM) and
   (DuoModel, DuoForCausalLM) and prints, per test, the outcome for each, then the tests whose outcomes differ.

    python tools/run_hf_common_tests.py --workdir /tmp/hf-common       # all common tests
    python tools/run_hf_common_tests.py -k "attention or embeds"        # a subset
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import transformers

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
STANDINS = {
    "tests/__init__.py": "",
    "tests/utils/__init__.py": "",
    # not shipped either: ConfigTester's check of the common kwargs then runs on none
    "tests/utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
    "tests/generation/__init__.py": "",
    "tests/generation/test_utils.py": "class GenerationTesterMixin:  # not shipped in the sdist\n    pass\n",
    "tests/exporters/__init__.py": "",
    "tests/exporters/test_export.py": "class ExportTesterMixin:  # not shipped in the sdist\n    pass\n",
}

# The tester of tests/models/llama (CausalLMModelTester defaults), once per model; Duo's big FFN takes
# Llama's intermediate size.
TEST_MODULE = '''
import unittest

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.auto import modeling_auto

from duolib import DuoConfig, DuoForCausalLM, DuoModel

from ..test_configuration_common import ConfigTester
from ..test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask
from ..generation.test_utils import GenerationTesterMixin

# What a model inside transformers has by its entries in the auto name mappings, which the mixin reads
# (``import duolib`` adds them too when it is imported before transformers' auto mappings)
modeling_auto.MODEL_MAPPING_NAMES.setdefault("duo", "DuoModel")
modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault("duo", "DuoForCausalLM")

SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
             max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)


class Tester:
    def __init__(self, parent, config_fn, batch_size=13, seq_length=7):
        self.parent, self.config_fn = parent, config_fn
        self.batch_size, self.seq_length, self.is_training = batch_size, seq_length, True
        self.vocab_size, self.hidden_size = SIZES["vocab_size"], SIZES["hidden_size"]
        self.num_hidden_layers, self.num_attention_heads = SIZES["num_hidden_layers"], SIZES["num_attention_heads"]

    def get_config(self):
        return self.config_fn()

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": mask}


# Inherits GenerationTesterMixin as tests/models/llama does (through CausalLMModelTest); here it is the empty
# stand-in, so test_generation_tester_mixin_inheritance checks the set-up only and no generate test runs.
# duolib's own tests cover generation against Llama (static cache, torch.compile, custom 4D masks).
class LlamaCommonTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (LlamaModel, LlamaForCausalLM)
    config_class, config_kwargs = LlamaConfig, dict(intermediate_size=37)

    def setUp(self):
        kw = {**SIZES, **self.config_kwargs}
        self.model_tester = Tester(self, lambda: self.config_class(**kw))
        self.config_tester = ConfigTester(self, config_class=self.config_class, **kw)

    def test_config(self):
        self.config_tester.run_common_tests()


class DuoCommonTest(LlamaCommonTest):
    all_model_classes = (DuoModel, DuoForCausalLM)
    # Stage-1 routing in training mode: a training forward without routes draws random routes, so every
    # parameter (small FFNs included) gets a gradient, as transformers' gradient-checkpointing tests require
    config_class, config_kwargs = DuoConfig, dict(big_ffn_size=37, small_ffn_size=4, stage1_route_probs=[0.0, 0.5, 0.5])
'''


def fetch(workdir: Path) -> Path:
    version = transformers.__version__
    sdist = workdir / f"transformers-{version}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"transformers=={version}", "-d", str(workdir)], check=True)
    tree = workdir / "hf_tests"
    with tarfile.open(sdist) as tar:
        for name in KEEP:
            member = tar.getmember(f"transformers-{version}/{name}")
            target = tree / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    for name, text in STANDINS.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    (tree / "tests/models").mkdir(exist_ok=True)
    (tree / "tests/models/__init__.py").write_text("")
    (tree / "tests/models/test_duo_vs_llama.py").write_text(TEST_MODULE)
    return tree


def test_deps(workdir: Path) -> Path:
    """``parameterized`` (a test-only dependency) installed into ``workdir/deps``, put on PYTHONPATH."""
    deps = workdir / "deps"
    if not (deps / "parameterized").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(deps),
                        "parameterized"], check=True)
    return deps


def outcomes(junit: Path) -> dict[tuple[str, str], str]:
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                kind = "failed"
            elif child.tag == "skipped":
                kind = "skipped"
        result[(case.get("classname").rsplit(".", 1)[-1], case.get("name"))] = kind
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "duolib" / "hf-common-tests")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    ap.add_argument("--timeout", type=int, default=3600)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    tree, deps = fetch(args.workdir), test_deps(args.workdir)
    junit = args.workdir / "results.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/models/test_duo_vs_llama.py", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}"] + (["-k", args.k] if args.k else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tree), str(deps)])}
    subprocess.run(cmd, cwd=tree, env=env, timeout=args.timeout)
    found = outcomes(junit)
    names = sorted({name for _, name in found})
    table = {n: (found.get(("LlamaCommonTest", n), "-"), found.get(("DuoCommonTest", n), "-")) for n in names}
    for model, col in (("Llama", 0), ("Duo", 1)):
        counts = {k: sum(v[col] == k for v in table.values()) for k in ("passed", "failed", "skipped")}
        print(f"{model}: {counts}")
    differ = {n: v for n, v in table.items() if v[0] != v[1]}
    print(f"{len(differ)} of {len(table)} tests differ (Llama, Duo):")
    for n, (llama, duo) in differ.items():
        print(f"  {n}: {llama} / {duo}")
    return 1 if any(duo == "failed" and llama == "passed" for llama, duo in differ.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
