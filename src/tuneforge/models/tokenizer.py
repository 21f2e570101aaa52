"""The tokenizer data is rendered with: the base model's, with a built-in chat template if the config names one.

Loaded on its own (no weights), so data is read, validated and tokenized before the model is
loaded, and a bad record stops the run in seconds whatever the model's size.  The same
tokenizer object is saved with the fine-tuned model, so chat and serving use the template
it was trained with.
"""

from __future__ import annotations

from tuneforge.models.chat_templates import builtin_template, use_template
from tuneforge.models.generate import end_of_turn_ids
from tuneforge.models.load import load_tokenizer
from tuneforge.models.resolve import resolve


def training_tokenizer(model_name: str, template: str):
    """(tokenizer, the token ids that end a reply) for the model reference and `data.template`."""
    from transformers import GenerationConfig

    model_dir = resolve(model_name)
    tokenizer = load_tokenizer(model_dir)
    extra = use_template(tokenizer, builtin_template(template)) if template != "tokenizer" else []
    generation = GenerationConfig.from_pretrained(model_dir) if (model_dir / "generation_config.json").is_file() else None
    return tokenizer, sorted(set(end_of_turn_ids(generation, tokenizer)) | set(extra))
