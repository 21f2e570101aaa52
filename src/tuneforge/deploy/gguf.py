"""Writing a (merged) transformers causal LM as one GGUF file: tensors, model metadata, tokenizer, chat template.

Written with the `gguf` package, the format's own Python writer (llama.cpp's gguf-py): its tensor
name map turns transformers' parameter names into GGUF's (`model.layers.0.self_attn.q_proj.weight`
-> `blk.0.attn_q.weight`), its quantizers write F16, BF16 and Q8_0 blocks. Families: Llama (SmolLM,
Llama 2/3 with default RoPE) and Qwen2 (which adds q/k/v biases).

Why Llama's q and k projections are permuted (and Qwen2's are not): transformers' Llama applies
RoPE to the two halves of each head (rotate_half pairs dimension i with i + d/2), while llama.cpp's
"normal" RoPE, the one its `llama` architecture uses, rotates adjacent pairs (2i, 2i+1). Reordering
the output rows of q_proj and k_proj inside each head from [first halves | second halves] to
interleaved pairs makes llama.cpp's rotation the same rotation; q.k is unchanged because q and k
get the same order. llama.cpp's converter does this for Llama; Qwen2 is run with the "NeoX" (half-
split) RoPE, as transformers runs it, so its weights go in as they are. transformers' GGUF loader
undoes the Llama permutation when it reads the file, so a round trip must reproduce the logits
(tests/deploy/test_gguf.py::test_f32_round_trip_keeps_the_logits).

The tokenizer goes in as llama.cpp describes a byte-level BPE: `tokenizer.ggml.model = "gpt2"`, the
pre-tokenizer's name (the regex llama.cpp splits text with before the merges, chosen from the
transformers tokenizer's own pre-tokenizer: `pre_tokenizer_name`), every token in its byte-level
spelling with its type (control for special added tokens), the merges, the special token ids, the
chat template, and the end-of-turn token (`tokenizer.ggml.eot_token_id`), which llama.cpp and
Ollama stop at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneforge.errors import ConfigError, ModelError

GGUF_NAME = "model.gguf"


@dataclass(frozen=True)
class Quant:
    name: str  # as on the command line
    file_type: int  # general.file_type (gguf.LlamaFileType)
    qtype: str  # the GGMLQuantizationType of 2-D weights; 1-D tensors (norms, biases) stay F32


QUANTS = {
    "f32": Quant("f32", 0, "F32"),
    "f16": Quant("f16", 1, "F16"),
    "bf16": Quant("bf16", 32, "BF16"),
    "q8_0": Quant("q8_0", 7, "Q8_0"),
}
# Formats llama.cpp reads that gguf-py cannot write (its K-quant and i-quant quantizers are not
# implemented, only their dequantizers), or that this export does not offer: refused, never approximated.
REFUSED = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_1", "q4_k_s", "q4_k_m", "q5_0", "q5_1", "q5_k_s",
           "q5_k_m", "q6_k", "iq4_nl", "iq4_xs")


def quant(name: str) -> Quant:
    """The quantisation `--quant NAME` names; a clear error for one this export cannot write correctly."""
    key = name.lower()
    if key in QUANTS:
        return QUANTS[key]
    if key in REFUSED:
        raise ConfigError(f"--quant {name}: the gguf package cannot write {name.upper()} (it has no quantizer for it), "
                          "and tuneforge does not approximate one; export --quant f16 and convert with llama.cpp's "
                          f"tool: `llama-quantize model.gguf model-{key}.gguf {name.upper()}`")
    raise ConfigError(f"--quant {name}: expected one of {', '.join(QUANTS)}")


@dataclass(frozen=True)
class Family:
    arch: str  # gguf's architecture name, general.architecture
    permute_qk: bool  # Llama's RoPE layout (see the module docstring)


FAMILIES = {"llama": Family("llama", True), "qwen2": Family("qwen2", False)}


def family_of(config) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ModelError(f"GGUF export supports the {' and '.join(FAMILIES)} model families; this model is "
                         f"{model_type!r}. Export --merge and convert with llama.cpp's convert_hf_to_gguf.py")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in (None, "default"):
        raise ModelError(f"GGUF export writes default RoPE only; this model uses {rope_type!r} RoPE scaling")
    return FAMILIES[model_type]


def rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permuted(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows reordered within each head from [half 1 | half 2] to interleaved pairs (llama.cpp's RoPE layout)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, tokenizer, end_of_turn: list[int], path: Path, quant_: Quant, name: str) -> None:
    """Write `model` (a merged causal LM, any dtype) and `tokenizer` into one GGUF file at `path`."""
    import gguf

    config = model.config
    family = family_of(config)
    writer = gguf.GGUFWriter(path, family.arch)
    writer.add_name(name)
    writer.add_file_type(quant_.file_type)
    if quant_.qtype not in ("F32", "F16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_model_metadata(writer, config)
    add_tokenizer(writer, tokenizer, config.vocab_size, end_of_turn)
    add_tensors(writer, model, family, quant_)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_model_metadata(writer, config) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_vocab_size(config.vocab_size)
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))


def add_tensors(writer, model, family: Family, quant_: Quant) -> None:
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.arch.upper()], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"GGUF export: no GGUF name for the parameter {hf_name} of this {family.arch} model")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if family.permute_qk and hf_name.endswith("q_proj.weight"):
            data = permuted(data, config.num_attention_heads)
        elif family.permute_qk and hf_name.endswith("k_proj.weight"):
            data = permuted(data, kv_heads)
        add_tensor(writer, name, data, quant_)


def add_tensor(writer, name: str, data: np.ndarray, quant_: Quant) -> None:
    """1-D tensors (norms, biases) stay F32, as llama.cpp needs; 2-D ones take the quantisation, or F16 when
    their rows do not split into whole Q8_0 blocks."""
    import gguf

    qtype = gguf.GGMLQuantizationType[quant_.qtype]
    if data.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        return
    if qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
        return
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if data.shape[-1] % block:
        writer.add_tensor(name, data.astype(np.float16))
        return
    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def add_tokenizer(writer, tokenizer, vocab_size: int, end_of_turn: list[int]) -> None:
    """The BPE vocabulary as llama.cpp's "gpt2" tokenizer model describes it."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE" or not byte_level(backend):
        raise ModelError("GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM, Llama 3 and Qwen2 "
                         f"use); this tokenizer is a {backend['model']['type']} one")
    tokens, types = token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(backend))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
           "unk": tokenizer.unk_token_id}
    if ids["eos"] is None and end_of_turn:
        ids["eos"] = end_of_turn[0]
    for key, token_id in ids.items():
        if token_id is not None:
            getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "pad": "add_pad_token_id",
                             "unk": "add_unk_token_id"}[key])(int(token_id))
    writer.add_add_bos_token(adds_bos(tokenizer))
    if end_of_turn:
        writer.add_eot_token_id(turn_end(tokenizer, end_of_turn))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def byte_level(backend: dict) -> bool:
    return '"ByteLevel"' in json.dumps(backend.get("pre_tokenizer")) or '"ByteLevel"' in json.dumps(backend.get("decoder"))


def token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token text and GGUF token type; ids the tokenizer lacks (an embedding padded past the
    vocabulary) get placeholder names, marked unused, as llama.cpp's converter does."""
    vocab = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {index: token for index, token in tokenizer.added_tokens_decoder.items()}
    size = max(vocab_size, max(vocab) + 1)
    tokens, types = [], []
    for index in range(size):
        if index not in vocab:
            tokens.append(f"[PAD{index}]")
            types.append(5)  # UNUSED
        elif index in added:
            tokens.append(added[index].content)
            types.append(3 if added[index].special else 4)  # CONTROL / USER_DEFINED
        else:
            tokens.append(vocab[index])
            types.append(1)  # NORMAL
    return tokens, types


def pre_tokenizer_name(backend: dict) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE, read off its pre-tokenizer.

    GPT-2's regex alone is "gpt-2"; digits split one by one before it is "smollm" (llama.cpp's name for
    that pair); a Split with Llama 3's or Qwen2's regex gets that family's name. Anything else is
    refused: a wrong name makes llama.cpp tokenize prompts differently from training, silently.
    """
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds and kinds[0] == "Split":
        pattern = steps[0].get("pattern", {}).get("Regex")
        for name, known in known_splits().items():
            if pattern == known:
                return name
    raise ModelError(f"GGUF export: this tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not one "
                     "llama.cpp is known to reproduce (GPT-2, SmolLM, Llama 3, Qwen2 style)")


def known_splits() -> dict[str, str]:
    """The split regexes of llama.cpp pre-tokenizer names, as transformers' GGUF reader knows them (one name each)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    names = {}
    for name in ("llama-bpe", "qwen2", "tekken", "gpt-4o"):
        if name in GGUF_PRE_TOKENIZER_SPLITS:
            names[name] = GGUF_PRE_TOKENIZER_SPLITS[name]
    return names


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS before plain text (Llama 3 does; SmolLM and Qwen2 do not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def turn_end(tokenizer, end_of_turn: list[int]) -> int:
    """The token a chat reply ends with: the stop token the chat template closes a reply with, else the tokenizer's
    EOS, else the first stop id."""
    texts = {token_id: tokenizer.convert_ids_to_tokens(token_id) for token_id in end_of_turn}
    if getattr(tokenizer, "chat_template", None):
        try:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                                     tokenize=False)
        except Exception:  # a template with its own rules about roles: fall back below
            rendered = ""
        closing = rendered[rendered.rfind("b"):]
        for token_id, text in texts.items():
            if text and text in closing:
                return token_id
    if tokenizer.eos_token_id in end_of_turn:
        return tokenizer.eos_token_id
    return end_of_turn[0]
