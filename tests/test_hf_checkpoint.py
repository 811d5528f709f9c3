"""A saved Duo model is a complete Hugging Face checkpoint: pipeline from the path alone, the
tokenizer's token ids, and auto classes through trust_remote_code in a process without duolib."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from duolib import DuoConfig, DuoForCausalLM
from duolib.manifests import write_manifest
from duolib.train.model_files import save_complete_checkpoint
from duolib.data.tokenizer import train_tokenizer
from tolerances import assert_paths_close

TEXTS = ["the cat sat on the mat. " * 20, "def f(x):\n    return x + 1\n" * 20, "a quick brown fox jumps. " * 20]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("final")
    torch.manual_seed(0)
    model = DuoForCausalLM(DuoConfig.preset("tiny")).eval()
    save_complete_checkpoint(model, train_tokenizer(TEXTS, vocab_size=300, max_chars=5_000), folder)
    return model, folder


def test_checkpoint_holds_code_token_ids_generation_config_and_tokenizer(saved):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "config.DuoConfig", "AutoModel": "model.DuoModel",
                                  "AutoModelForCausalLM": "model.DuoForCausalLM"}
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 0, 1)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (0, 1)
    for name in ("model.py", "layers.py", "config.py", "routing.py", "flops.py", "tokenizer.json", "model.safetensors"):
        assert (folder / name).is_file(), name


def test_pipeline_text_generation_from_the_path_alone(saved):
    model, folder = saved
    generator = pipeline("text-generation", model=str(folder))
    text = generator("the cat", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    ids = generator.tokenizer("the cat", return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert text.startswith("the cat") and text == generator.tokenizer.decode(expected[0], skip_special_tokens=True)


def test_trust_remote_code_loads_without_duolib(saved, tmp_path):
    """A fresh process, duolib never imported: the code saved beside the weights is used."""
    model, folder = saved
    x = torch.randint(2, 300, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x, routes=[0, 1, 2, 2]).logits
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    script = f"""
import sys, torch
torch.set_num_threads(1)  # as the test process (conftest): the same computation, so the same bits on any CPU
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
folder = {str(folder)!r}
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True)
io = torch.load({str(tmp_path / "io.pt")!r})
with torch.no_grad():
    torch.save(model(io["x"], routes=[0, 1, 2, 2]).logits, {str(tmp_path / "got.pt")!r})
assert type(model).__name__ == "DuoForCausalLM" and type(base).__name__ == "DuoModel", (type(model), type(base))
assert not any(name == "duolib" or name.startswith("duolib.") for name in sys.modules), "duolib was imported"
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # the saved copy runs the same arithmetic through another import path: equal up to rounding
    assert_paths_close(torch.load(tmp_path / "got.pt"), expected)


def test_duolib_import_registers_the_auto_classes(saved):
    _, folder = saved
    assert isinstance(AutoModelForCausalLM.from_pretrained(folder), DuoForCausalLM)


def test_trust_remote_code_without_duolib_refuses_damaged_weights(saved, tmp_path):
    """The manifest check travels with the saved code: a process that never imports duolib still refuses a
    folder whose weights changed after duolib wrote it, naming the file."""
    _, folder = saved
    damaged = tmp_path / "final"
    shutil.copytree(folder, damaged)
    write_manifest(damaged)  # as duo train writes final/
    weights = damaged / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0xFF
    weights.write_bytes(bytes(data))
    script = f"""
import sys
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained({str(damaged)!r}, trust_remote_code=True)
except Exception as err:
    assert not any(n == "duolib" or n.startswith("duolib.") for n in sys.modules), "duolib was imported"
    print(type(err).__name__, err)
    sys.exit(3)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 3, (run.stdout + run.stderr)[-3000:]
    assert "model.safetensors does not match its recorded sha256" in run.stdout, run.stdout
