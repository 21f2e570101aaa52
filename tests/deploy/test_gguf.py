"""GGUF export: the file round-trips through transformers' GGUF reader (and llama.cpp when installed), the gate refuses a
corrupted file, the Modelfile's TEMPLATE renders what the chat template renders.

Tiny random models (tests/conftest.py); the LoRA run on top of a short full fine-tune comes from test_export.py's helper.
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import pytest
import torch

from tests.conftest import CHATML, LLAMA3, make_model_dir, train_tokenizer
from tests.deploy.test_export import write_run
from tuneforge.deploy import gguf, modelfile
from tuneforge.deploy.commands import PARITY_FAILED_EXIT, add_parsers, run_export
from tuneforge.deploy.gguf_export import TOLERANCES, GgufRequest, export_gguf, load_gguf
from tuneforge.errors import ConfigError, ModelError
from tuneforge.models.generate import end_of_turn_ids

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
MESSAGES = [{"role": "user", "content": "What is 12 plus 30?"}]


def console():
    from rich.console import Console

    return Console(stderr=True)


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tuneforge")
    add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["export", *argv])


def loaded(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(model_dir)


def prompt_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def written(model, tokenizer, directory, quant: str):
    path = directory / gguf.GGUF_NAME
    gguf.write_gguf(model, tokenizer, end_of_turn_ids(model.generation_config, tokenizer), path, gguf.QUANTS[quant], "t")
    return path


@torch.no_grad()
def test_f32_round_trip_keeps_the_logits(tiny_model, tmp_path):
    """transformers' reader undoes llama.cpp's q/k permutation: a wrong permutation would change every logit."""
    model, tokenizer = loaded(tiny_model)
    path = written(model, tokenizer, tmp_path, "f32")
    back, back_tokenizer = load_gguf(path)
    ids = prompt_ids(tokenizer)
    assert torch.equal(prompt_ids(back_tokenizer), ids)  # vocabulary, merges, special tokens and chat template
    assert back_tokenizer.eos_token == "<|im_end|>"
    assert torch.equal(back(ids).logits, model(ids).logits)


@pytest.mark.parametrize("quant", ["f16", "bf16", "q8_0"])
@torch.no_grad()
def test_quantised_round_trips_stay_within_their_tolerance(tiny_model, tmp_path, quant):
    model, tokenizer = loaded(tiny_model)
    back, _ = load_gguf(written(model, tokenizer, tmp_path, quant))
    ids = prompt_ids(tokenizer)
    diff = float((back(ids).logits - model(ids).logits).abs().max())
    assert 0 < diff <= TOLERANCES[quant].atol


def test_metadata_names_the_tokenizer_and_end_of_turn_as_llama_cpp_expects(tiny_model, tmp_path):
    from gguf import GGUFReader

    model, tokenizer = loaded(tiny_model)
    reader = GGUFReader(written(model, tokenizer, tmp_path, "q8_0"))
    field = {name: reader.fields[name].contents() for name in reader.fields if not name.startswith("tokenizer.ggml.tok")}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field["general.architecture"] == "llama" and field["general.file_type"] == 7
    assert field["tokenizer.ggml.model"] == "gpt2" and field["tokenizer.ggml.pre"] == "gpt-2"
    assert field["tokenizer.ggml.eos_token_id"] == field["tokenizer.ggml.eot_token_id"] == im_end
    assert field["tokenizer.chat_template"] == CHATML and field["llama.context_length"] == 512
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[im_end] == 3 and types[300] == 1  # control, normal
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in kinds  # tied embeddings: llama.cpp reuses token_embd


@torch.no_grad()
def test_qwen2_with_qkv_biases_round_trips(chatml_tokenizer, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(chatml_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, eos_token_id=chatml_tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config).eval()
    for layer in model.model.layers:  # random biases, so that a dropped or misplaced one shows
        torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
        torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    back, _ = load_gguf(written(model, chatml_tokenizer, tmp_path, "f32"))
    ids = prompt_ids(chatml_tokenizer)
    assert float((back(ids).logits - model(ids).logits).abs().max()) < 1e-4


def test_refused_quantisations_and_model_families_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="cannot write Q4_K_M.*llama-quantize"):
        gguf.quant("q4_k_m")
    with pytest.raises(ConfigError, match="expected one of f32, f16, bf16, q8_0"):
        gguf.quant("q3")
    with pytest.raises(ConfigError, match="cannot write Q4_K_M"):
        run_export(cli("runs/x", "--to", str(tmp_path / "o"), "--format", "gguf", "--quant", "q4_k_m"), console())
    with pytest.raises(ConfigError, match="--adapter does not apply"):
        run_export(cli("runs/x", "--to", str(tmp_path / "o"), "--format", "gguf", "--adapter"), console())
    from transformers import GPT2Config

    with pytest.raises(ModelError, match="llama and qwen2"):
        gguf.family_of(GPT2Config())


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory):
    """A LoRA run on top of a full fine-tune of the tiny model that answers and stops (as in test_export.py)."""
    torch.set_num_threads(1)
    full = write_run(tmp_path_factory.mktemp("full"), str(tiny_model), "full", learning_rate=1e-2, max_steps=80).run_dir
    return write_run(tmp_path_factory.mktemp("lora"), str(full / "final"), "lora", learning_rate=3e-3,
                     max_steps=10).run_dir


def test_gguf_export_of_a_lora_run_passes_the_gate(lora_run, tmp_path, capsys):
    out = tmp_path / "gguf"
    assert run_export(cli(str(lora_run), "--to", str(out), "--format", "gguf", "--quant", "f32", "--limit", "4"),
                      console()) == 0
    assert {p.name for p in out.iterdir()} == {"model.gguf", "Modelfile", "README.md", "parity.json"}
    assert not list(tmp_path.glob(".gguf*"))
    report = __import__("json").loads((out / "parity.json").read_text())
    assert report["passed"] and report["mode"] == "gguf f32" and report["max_abs_logit_diff"] <= 1e-3
    assert all(p["identical"] and p["same_prompt"] for p in report["prompts"])
    text = (out / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in text and "<|im_start|>" in text
    assert "greedy replies identical 4/4" in capsys.readouterr().err


def test_a_corrupted_gguf_fails_the_gate_and_writes_nothing(lora_run, tmp_path):
    out = tmp_path / "gguf"

    def corrupt(directory):
        path = directory / gguf.GGUF_NAME
        data = bytearray(path.read_bytes())
        tail = len(data) // 3  # the last third holds tensor data (the metadata comes first)
        data[-tail:] = np.random.default_rng(0).integers(0, 256, tail, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))

    result = export_gguf(GgufRequest(lora_run, out, "f32", limit=3), console(), before_check=corrupt)
    assert result.directory is None and not out.exists() and not list(tmp_path.glob(".gguf*"))
    assert not result.report.passed and result.report_path == lora_run / "parity_failed.json"
    assert any("logits differ" in r or "cannot" in r for r in result.report.reasons)


def test_a_truncated_gguf_fails_the_gate_with_the_reader_error(lora_run, tmp_path):
    def truncate(directory):
        path = directory / gguf.GGUF_NAME
        path.write_bytes(path.read_bytes()[:4096])

    result = export_gguf(GgufRequest(lora_run, tmp_path / "gguf", "f16", limit=2, llama_cpp=False), console(),
                         before_check=truncate)
    assert result.directory is None
    assert result.report.reasons[0].startswith("transformers cannot read the written file")


def test_modelfile_reproduces_chatml_with_its_default_system_prompt(chatml_tokenizer, tmp_path):
    recognised = modelfile.recognise(chatml_tokenizer)
    assert recognised.format is modelfile.CHATML and recognised.default_system == "You are a test assistant."
    assert modelfile.write(tmp_path / "Modelfile", chatml_tokenizer, [chatml_tokenizer.eos_token_id]) is None
    text = (tmp_path / "Modelfile").read_text()
    assert 'SYSTEM """You are a test assistant."""' in text
    assert "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}" in text


def test_modelfile_reproduces_llama3_and_leaves_out_a_template_it_does_not_know(tmp_path):
    llama3 = train_tokenizer(LLAMA3, eos="<|eot_id|>", bos="<|begin_of_text|>")
    recognised = modelfile.recognise(llama3)
    assert recognised.format is modelfile.LLAMA3 and recognised.prefix == "<|begin_of_text|>"
    assert recognised.default_system is None
    odd = train_tokenizer("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}", "<|im_end|>", None)
    warning = modelfile.write(tmp_path / "Modelfile", odd, [odd.eos_token_id])
    assert "no TEMPLATE" in warning and "TEMPLATE" not in (tmp_path / "Modelfile").read_text()


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (pip install 'tuneforge[llamacpp]')")
def test_llama_cpp_reads_the_file_as_transformers_does(tiny_model, tmp_path):
    """llama.cpp's own tokenizer, RoPE layout and kernels on a written f32 file: same prompt ids, near logits."""
    from tuneforge.deploy.gguf_llamacpp import logits_of, open_llama

    model, tokenizer = loaded(tiny_model)
    path = written(model, tokenizer, tmp_path, "f32")
    llm = open_llama(path, n_ctx=256, logits_all=True)
    ids = prompt_ids(tokenizer)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids[0].tolist()
    with torch.no_grad():
        expected = model(ids).logits[0].numpy()
    assert np.abs(logits_of(llm, ids[0].tolist()) - expected).max() < 0.05


def test_make_model_dir_tokenizers_round_trip_with_llama3_bos(tmp_path):
    """A tokenizer that adds BOS (Llama 3) says so in the file, so llama.cpp adds it too."""
    llama3 = train_tokenizer(LLAMA3, eos="<|eot_id|>", bos="<|begin_of_text|>")
    model_dir = make_model_dir(tmp_path / "m", llama3, "<|eot_id|>")
    model, tokenizer = loaded(model_dir)
    from gguf import GGUFReader

    reader = GGUFReader(written(model, tokenizer, tmp_path, "f16"))
    eot = reader.fields["tokenizer.ggml.eot_token_id"].contents()
    assert eot == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is gguf.adds_bos(tokenizer)
