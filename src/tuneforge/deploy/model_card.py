"""The exported model's README.md: where it came from (base model, data hashes, config), how it scored, how to load it.

Everything on the card is read from the run directory as training and `tuneforge eval` left it
(config.yaml, data_manifest.json, eval/summary.json, eval/DATA/{base,tuned}/metrics.json and
gates.json) plus the parity report, so the card states facts, never defaults or guesses; a
section whose file is missing says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneforge.deploy.parity import ParityReport


@dataclass(frozen=True)
class CardFacts:
    mode: str  # "merge" or "adapter"
    source: Path  # the saved fine-tune that was exported (RUN/final or a checkpoint's model/)
    run_dir: Path | None  # the run around it, when there is one
    base_model: str  # the tuneforge model reference the run was trained from
    base_path: str  # where the base lives: the adapter's base_model_name_or_path
    base_description: str | None  # what an embedded base model is, from tuneforge's table
    method: str  # "lora" or "full"
    parity: ParityReport


def render(facts: CardFacts) -> str:
    library = "peft" if facts.mode == "adapter" else "transformers"
    lines = ["---", f"library_name: {library}", "pipeline_tag: text-generation", "tags:", "- tuneforge",
             f"- {facts.method}", "---", "", f"# {facts.run_dir.name if facts.run_dir else facts.source.name}", ""]
    kind = ("the LoRA adapter alone (PEFT format)" if facts.mode == "adapter"
            else "a full model (LoRA merged into the base)" if facts.method == "lora" else "a full fine-tuned model")
    lines += [f"A fine-tune exported by `tuneforge export` from `{facts.source}`: {kind}.", ""]
    lines += base_section(facts) + usage_section(facts) + parity_section(facts.parity)
    lines += data_section(facts.run_dir) + eval_section(facts.run_dir) + config_section(facts.run_dir)
    return "\n".join(lines).rstrip() + "\n"


def write(directory: Path, facts: CardFacts) -> None:
    (directory / "README.md").write_text(render(facts), encoding="utf-8")


def base_section(facts: CardFacts) -> list[str]:
    lines = ["## Base model", "", f"- tuneforge reference: `{facts.base_model}`",
             f"- loaded from: `{facts.base_path}`"]
    if facts.base_description:
        lines.append(f"- what it is: {facts.base_description}. These are the weights the fine-tune was trained on; "
                     "the hub's original checkpoint of the same model holds different (unquantized) weights")
    lines.append(f"- method: {facts.method}")
    if facts.mode == "adapter":
        lines.append("- the adapter's `base_model_name_or_path` is the directory above (or the hub id, for a hub "
                     "model): an adapter applies only to the exact weights it was trained on")
    return lines + [""]


def usage_section(facts: CardFacts) -> list[str]:
    if facts.mode == "adapter":
        code = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                'model = AutoPeftModelForCausalLM.from_pretrained("DIR")  # loads the base named above',
                'tokenizer = AutoTokenizer.from_pretrained("DIR")']
        serve = [f"vllm serve {facts.base_path} --enable-lora --lora-modules tuned=DIR --chat-template DIR/chat_template.jinja",
                 "# vLLM's --max-lora-rank defaults to 16: raise it when the adapter's r is larger"]
    else:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                'model = AutoModelForCausalLM.from_pretrained("DIR")',
                'tokenizer = AutoTokenizer.from_pretrained("DIR")']
        serve = ["vllm serve DIR"]
    code += ['messages = [{"role": "user", "content": "Hello"}]',
             "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
             "reply = model.generate(**inputs, do_sample=False, max_new_tokens=128)  # stops at the end-of-turn token",
             "print(tokenizer.decode(reply[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))"]
    return ["## Use", "", "```python", *code, "```", "", "```bash", *serve, "```", "",
            "The chat template is the one the model was trained with (`chat_template.jinja`); "
            "`generation_config.json` lists every end-of-turn token as `eos_token_id`.", ""]


def parity_section(report: ParityReport) -> list[str]:
    lines = ["## Parity check", "", report.summary() + ".",
             "Details per prompt in `parity.json`.", ""]
    return lines + [f"- warning: {w}" for w in report.warnings] + ([""] if report.warnings else [])


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def data_section(run_dir: Path | None) -> list[str]:
    manifest = read_json(run_dir / "data_manifest.json") if run_dir else None
    if manifest is None:
        return ["## Training data", "", "No data_manifest.json beside the exported model.", ""]
    lines = ["## Training data", "", "| file | format | sha256 |", "| --- | --- | --- |"]
    for path, digest in manifest.get("files", {}).items():
        lines.append(f"| `{path}` | {manifest.get('formats', {}).get(path, '')} | `{digest}` |")
    lines += ["", f"{manifest.get('train_records', 0):,} training records ({manifest.get('train_tokens', 0):,} tokens, "
              f"{manifest.get('trained_tokens', 0):,} trained), {manifest.get('validation_records', 0):,} validation, "
              f"{manifest.get('test_records', 0):,} test."]
    if manifest.get("replay_source"):
        lines.append(f"Replay against forgetting: {manifest.get('replay_records', 0):,} records from "
                     f"{manifest['replay_source']} (included in the training count).")
    return lines + [""]


def eval_section(run_dir: Path | None) -> list[str]:
    lines = ["## Evaluation", ""]
    summary = read_json(run_dir / "eval" / "summary.json") if run_dir else None
    if summary:
        lines += ["At the end of training (eval/summary.json):", "", "| | base model | fine-tuned |", "| --- | --- | --- |"]
        for label, row in summary.items():
            lines.append(f"| {label} | {cell(row.get('base'))} | {cell(row.get('tuned'))} |")
        lines.append("")
    for tuned in sorted(run_dir.glob("eval/*/tuned/metrics.json")) if run_dir else []:
        base = read_json(tuned.parent.parent / "base" / "metrics.json") or {}
        metrics = (read_json(tuned) or {}).get("metrics", {})
        lines += [f"`tuneforge eval` on {tuned.parent.parent.name}:", "", "| metric | base model | fine-tuned |",
                  "| --- | --- | --- |"]
        lines += [f"| {name} | {cell(base.get('metrics', {}).get(name))} | {cell(value)} |" for name, value in metrics.items()]
        gates = read_json(tuned.parent.parent / "gates.json")
        if gates:
            lines += ["", f"Gates {'passed' if gates.get('passed') else 'FAILED'}:"]
            lines += [f"- {g.get('reason')}" for g in gates.get("gates", [])]
        lines.append("")
    if len(lines) == 2:
        lines += ["No evaluation results in the run directory.", ""]
    return lines


def cell(value) -> str:
    if isinstance(value, list) and len(value) == 2:
        hits, total = value
        return f"{hits}/{total}" + (f" ({hits / total:.0%})" if total else "")
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def config_section(run_dir: Path | None) -> list[str]:
    config = run_dir / "config.yaml" if run_dir else None
    if config is None or not config.is_file():
        return ["## Run configuration", "", "No config.yaml beside the exported model.", ""]
    return ["## Run configuration", "", "The resolved run file (every default filled in):", "", "```yaml",
            config.read_text().rstrip(), "```", ""]
