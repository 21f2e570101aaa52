"""The GGUF parity gate's second reader: llama.cpp itself (through llama-cpp-python) on the written file.

transformers' reader proves the tensors and metadata round-trip; llama.cpp is what users run, with
its own tokenizer (the file's pre-tokenizer name and merges), its own RoPE layout (the q/k
permutation) and its own kernels. So it is asked three things, all against the run's model: does
it tokenize each golden prompt's text into the same ids, are its logits over prompt + reference
reply within the quantisation's `llama_cpp_atol`, and are enough of its greedy replies identical
(`llama_cpp_min_identical`: llama.cpp keeps its KV cache in float16, so even an f32 file may flip a near tie).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tuneforge.deploy import parity


def open_llama(path: Path, n_ctx: int = 2048, logits_all: bool = False, threads: int | None = None):
    from llama_cpp import Llama

    threads = threads or max(1, min(os.cpu_count() or 1, 4))
    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=threads,
                 n_threads_batch=threads, verbose=False)


def greedy_reply(llm, prompt: list[int], stops: set[int], max_new_tokens: int,
                 suppressed: list[int] = ()) -> tuple[list[int], bool]:
    """llama.cpp's greedy reply: the argmax of its own logits at each step, with the generation config's
    suppressed tokens masked as transformers' `generate` masks them (the reference honours them too)."""
    llm.reset()
    llm.eval(prompt)
    reply: list[int] = []
    while len(reply) < max_new_tokens:
        scores = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        if len(suppressed):
            scores[list(suppressed)] = -np.inf
        token = int(scores.argmax())
        reply.append(token)
        if token in stops:
            return reply, True
        llm.eval([token])
    return reply, False


def logits_of(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def llama_cpp_verdict(path: Path, prompts: list[parity.GoldenPrompt], tokenizer, reference: parity.Answers,
                      stops: set[int], max_new_tokens: int, tolerance, suppressed: list[int] = ()) -> tuple[list[str], dict]:
    """(reasons the file fails under llama.cpp, empty when it passes; its figures for the report)."""
    longest = max(len(p.input_ids) + len(r) for p, r in zip(prompts, reference.replies))
    try:
        llm = open_llama(path, n_ctx=max(longest, max(len(p.input_ids) for p in prompts) + max_new_tokens) + 8,
                         logits_all=True)
    except Exception as exc:  # llama.cpp refuses a broken file by raising ValueError/RuntimeError
        return [f"llama.cpp cannot load the written file: {type(exc).__name__}: {exc}"], {}
    reasons = []
    try:
        retokenized = [p for p in prompts if llm.tokenize(p.text.encode(), add_bos=False, special=True) != p.input_ids]
        if retokenized:
            reasons.append(f"llama.cpp tokenizes {len(retokenized)} of {len(prompts)} prompts differently from the run's "
                           f"tokenizer, first {retokenized[0].source} (the file's pre-tokenizer or merges are wrong)")
        worst, where, identical, first = 0.0, "", 0, None
        for index, prompt in enumerate(prompts):
            expected = reference.replies[index]
            scores = logits_of(llm, prompt.input_ids + expected)
            diff = float(np.abs(scores - reference.logits[index].numpy()).max())
            if not diff <= worst:
                worst, where = diff, prompt.source
            reply, _ = greedy_reply(llm, prompt.input_ids, stops, max_new_tokens, suppressed)
            if reply == expected:
                identical += 1
            elif first is None:
                at = next((k for k, (a, b) in enumerate(zip(reply, expected)) if a != b), min(len(reply), len(expected)))
                first = (prompt.source, at, tokenizer.decode(expected[at: at + 4]), tokenizer.decode(reply[at: at + 4]))
        if not worst <= tolerance.llama_cpp_atol:
            reasons.append(f"llama.cpp: logits differ by up to {worst:.3g} (tolerance {tolerance.llama_cpp_atol:g}), "
                           f"most on {where}")
        if identical < tolerance.llama_cpp_min_identical * len(prompts):
            source, at, want, got = first
            reasons.append(f"llama.cpp: greedy replies identical on {identical} of {len(prompts)} prompts, fewer than "
                           f"{tolerance.llama_cpp_min_identical:.0%}; first difference on {source} at reply token {at}: the run's "
                           f"model gives {want!r}..., llama.cpp {got!r}...")
        figures = {"max_abs_logit_diff": worst, "atol": tolerance.llama_cpp_atol, "identical": identical,
                   "prompts": len(prompts), "same_tokenization": len(prompts) - len(retokenized)}
    finally:
        llm.close()
    return reasons, figures
