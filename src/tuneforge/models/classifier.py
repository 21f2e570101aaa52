"""The classifier: a model with a classification head, built for training, saved with its labels, loaded to predict.

AutoModelForSequenceClassification gives BERT-family encoders a head on the pooled first token and
decoders (Llama, Qwen, SmolLM, ...) a `score` head on the last non-padding token, so one code path
serves both, and a full fine-tune loads in plain `transformers` as it would anywhere.  LoRA adapts
the body (peft's SEQ_CLS task) while peft trains and saves the new head in full (`modules_to_save`):
a freshly initialised head has nothing for a low-rank update to adapt.

What a saved classifier needs besides its weights is in `tuneforge.json` (task, base model, method,
the labels in head order, multi-label and threshold, the token limit); a run's `final/` also has the
labels in `config.json`'s id2label / label2id, for full fine-tunes and adapters alike (a LoRA
checkpoint, written by train/checkpoint.py, holds the adapter and tuneforge.json only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.models.labels import Label, LabelSet
from tuneforge.errors import ModelError
from tuneforge.models.load import MODEL_INFO, load_tokenizer, quiet_transformers, saved_model_dir
from tuneforge.models.resolve import resolve

TASK = "classify"


@dataclass(frozen=True)
class ClassifierInfo:
    """tuneforge.json of a classifier: ModelInfo's keys (base_model, method) plus what predicting needs."""

    base_model: str
    method: str  # "lora" (the directory holds an adapter and the head) or "full"
    labels: LabelSet
    threshold: float  # multi-label: a class is predicted at this probability
    max_length: int  # texts are cut to this many tokens, in training and prediction alike

    def write(self, directory: Path) -> None:
        data = {"task": TASK, "base_model": self.base_model, "method": self.method, "labels": list(self.labels.names),
                "multi_label": self.labels.multi_label, "threshold": self.threshold, "max_length": self.max_length}
        (directory / MODEL_INFO).write_text(json.dumps(data, indent=2, ensure_ascii=False))

    @staticmethod
    def read(directory: Path) -> ClassifierInfo:
        data = json.loads((directory / MODEL_INFO).read_text())
        if data.get("task") != TASK:
            raise ModelError(f"{directory}: not a classifier (trained with task: {data.get('task', 'chat')})")
        return ClassifierInfo(data["base_model"], data["method"], LabelSet(tuple(data["labels"]), data["multi_label"]),
                              data["threshold"], data["max_length"])


def classifier_dir(reference: str) -> Path | None:
    """The saved classifier a run directory, checkpoint or model directory holds; None if it holds none."""
    path = Path(reference).expanduser()
    saved = saved_model_dir(path) if path.is_dir() else None
    if saved is None:
        return None
    try:
        task = json.loads((saved / MODEL_INFO).read_text()).get("task")
    except (OSError, json.JSONDecodeError):
        return None
    return saved if task == TASK else None


def is_classifier(reference: str) -> bool:
    return classifier_dir(reference) is not None


def load_with_head(path: Path, labels: LabelSet, pad_id: int | None):
    """The model at `path` with a head for `labels` (a new one when the checkpoint has none, or one of another size)."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    problem = "multi_label_classification" if labels.multi_label else "single_label_classification"
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch.float32, num_labels=len(labels.names), id2label=labels.id2label,
            label2id=labels.label2id, problem_type=problem, ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot load as a sequence classifier: {exc}") from exc
    if model.config.pad_token_id is None:  # decoders pool the last token that is not padding
        model.config.pad_token_id = pad_id
    model.config.use_cache = False  # a decoder would build a KV cache nobody reads
    return model


def token_limit(model, tokenizer, wanted: int) -> int:
    """The most tokens a text keeps: train.max_seq_length, within the model's positions and the tokenizer's limit."""
    limits = [wanted, getattr(model.config, "max_position_embeddings", None) or wanted]
    if isinstance(tokenizer.model_max_length, int) and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


def build_for_training(config, labels: LabelSet, checkpoint: Path | None):
    """(model, tokenizer, info) for a run: full weights, or the base wrapped in a LoRA adapter; from
    `checkpoint/model` when resuming."""
    base_dir = resolve(config.model.name)
    tokenizer = load_tokenizer(base_dir)
    if config.method == "full":
        model = load_with_head(checkpoint / "model" if checkpoint else base_dir, labels, tokenizer.pad_token_id)
        model.requires_grad_(True)
    else:
        from peft import LoraConfig, PeftModel, get_peft_model

        base = load_with_head(base_dir, labels, tokenizer.pad_token_id)
        if checkpoint:
            model = PeftModel.from_pretrained(base, checkpoint / "model", is_trainable=True)
        else:
            lora = config.lora
            model = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules=lora.target_modules, task_type="SEQ_CLS"))
    limit = token_limit(model, tokenizer, config.train.max_seq_length)
    info = ClassifierInfo(config.model.name, config.method, labels, config.classify.threshold, limit)
    return model, tokenizer, info


def save_classifier(model, tokenizer, info: ClassifierInfo, directory: Path) -> None:
    """Weights (an adapter with the head, or the full model), tokenizer, tuneforge.json, and config.json's labels."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if info.method == "lora":  # the adapter directory gets the labelled config too, for readers of id2label
        model.get_base_model().config.save_pretrained(directory)
    info.write(directory)


# --- running it ----------------------------------------------------------------------------------

def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def collate(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def forward(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's logits, [batch, classes], in float32."""
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).logits.float()


def probabilities_of(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


@torch.inference_mode()
def all_logits(model, rows: list[list[int]], pad_id: int, batch_size: int) -> torch.Tensor:
    """Logits of every row, batched by length (little padding) and returned in the rows' order."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    chunks = [forward(model, collate([rows[i] for i in order[start : start + batch_size]], pad_id)).cpu()
              for start in range(0, len(order), batch_size)]
    by_length = torch.cat(chunks)
    logits = torch.empty_like(by_length)
    logits[torch.tensor(order)] = by_length
    return logits


@dataclass(frozen=True)
class Prediction:
    label: Label  # the class; for multi-label, the classes at the threshold (possibly none)
    scores: dict[str, float]  # every class's probability (softmax, or per-class sigmoid for multi-label)

    def as_dict(self) -> dict:
        key = "labels" if isinstance(self.label, tuple) else "label"
        return {key: list(self.label) if isinstance(self.label, tuple) else self.label, "scores": self.scores}


@dataclass
class Classifier:
    """A loaded classifier: `classify(texts)` for predict and the server."""

    model: object
    tokenizer: object
    info: ClassifierInfo

    @property
    def labels(self) -> LabelSet:
        return self.info.labels

    def probabilities(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        rows = encode(self.tokenizer, texts, self.info.max_length)
        logits = all_logits(self.model, rows, self.tokenizer.pad_token_id, batch_size)
        return probabilities_of(logits, self.labels.multi_label)

    def classify(self, texts: list[str], batch_size: int = 32, threshold: float | None = None) -> list[Prediction]:
        if not texts:
            return []
        return self.predictions(self.probabilities(texts, batch_size), threshold)

    def predictions(self, probabilities: torch.Tensor, threshold: float | None = None) -> list[Prediction]:
        return predictions_of(self.labels, probabilities, self.info.threshold if threshold is None else threshold)


def predictions_of(labels: LabelSet, probabilities: torch.Tensor, threshold: float) -> list[Prediction]:
    """Each row's label(s) at the threshold and its class probabilities (text and image classifiers alike)."""
    predicted = labels.decode(probabilities, threshold)
    return [Prediction(label, {name: round(float(p), 6) for name, p in zip(labels.names, row)})
            for label, row in zip(predicted, probabilities.tolist())]


def load_classifier(reference: str, device: torch.device | None = None) -> Classifier:
    """A saved classifier (run directory, checkpoint or its model directory), in eval mode."""
    saved = classifier_dir(reference)
    if saved is None:
        raise ModelError(f"{reference}: no classifier here (a run trained with task: classify, its final/ or a "
                         "checkpoint); for chat models use tuneforge generate")
    info = ClassifierInfo.read(saved)
    tokenizer = load_tokenizer(saved)
    if info.method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_with_head(resolve(info.base_model), info.labels, tokenizer.pad_token_id),
                                          saved)
    else:
        model = load_with_head(saved, info.labels, tokenizer.pad_token_id)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Classifier(model.to(device).eval(), tokenizer, info)
