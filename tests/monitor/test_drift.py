"""`tuneforge monitor drift`: held-out samples of the training distribution stay below the thresholds,
deliberately different traffic (general questions, lines of code, scrambled prompts) is flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.monitor.test_report import T0, log_request, said
from tuneforge.cli import main
from tuneforge.monitor.drift import (
    DEFAULT_THRESHOLDS, check_drift, js_divergence, ks_statistic, production_prompts, prompt_perplexities,
    training_prompts,
)
from tuneforge.monitor.store import connect, read_requests

ROOT = Path(__file__).resolve().parents[2]
INTENTS_TRAIN = ROOT / "examples" / "intents" / "train.jsonl"
INTENTS_TEST = ROOT / "examples" / "intents" / "test.jsonl"
GENERAL = ROOT / "src" / "tuneforge" / "resources" / "replay_prompts.jsonl"


def general_prompts() -> list[str]:
    return [json.loads(line)["prompt"] for line in GENERAL.read_text().splitlines()]


def code_lines() -> list[str]:
    """Lines of tuneforge's own source: traffic nothing like customer-support messages."""
    lines = (ROOT / "src" / "tuneforge" / "monitor" / "store.py").read_text().splitlines()
    return [line.strip() for line in lines if len(line.strip()) > 20]


def sample(texts: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.choice(len(texts), n, replace=False)]


def write_log(path: Path, prompts: list[str]) -> Path:
    conn = connect(path)
    for i, prompt in enumerate(prompts):
        log_request(conn, f"r{i}", T0 + i, messages=[{"role": "user", "content": prompt}])
    log_request(conn, "failed", T0 + 999, messages=[{"role": "user", "content": "x"}], status=500)
    conn.commit()
    conn.close()
    return path


def test_the_measures_are_the_textbook_ones():
    assert ks_statistic(np.array([1, 2, 3]), np.array([1, 2, 3])) == 0
    assert ks_statistic(np.array([1, 2, 3]), np.array([10, 11])) == 1
    assert ks_statistic(np.array([1, 2, 3, 4]), np.array([3, 4, 5, 6])) == 0.5
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1
    assert js_divergence(np.array([2.0, 2.0]), np.array([1.0, 1.0])) == 0
    # p = (1/2, 1/2, 0), q = (0, 1/2, 1/2): JS = 1/2 bit
    assert js_divergence(np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 1.0])) == pytest.approx(0.5)


def test_production_prompts_are_the_user_side_text(tmp_path):
    conn = connect(tmp_path / "requests.db")
    log_request(conn, "chat", T0, messages=[{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello"},
                                            {"role": "user", "content": "Where is my order?"}])
    log_request(conn, "text", T0 + 1, messages=[{"role": "prompt", "content": "Once upon a time"}],
                endpoint="/v1/completions")
    log_request(conn, "empty", T0 + 2, messages=[{"role": "user", "content": "  "}])
    conn.commit()
    assert production_prompts(read_requests(conn)) == ["Be brief.\nHi\nWhere is my order?", "Once upon a time"]


def test_big_training_sets_are_sampled_and_bad_records_passed_over(tmp_path):
    lines = INTENTS_TRAIN.read_text().splitlines()
    messy = tmp_path / "train.jsonl"
    messy.write_text("\n".join([lines[0], "{broken", *lines[1:]]) + "\n")
    everything = training_prompts([str(messy)])
    assert len(everything) == 360
    some = training_prompts([str(messy)], limit=50)
    assert len(some) == len(set(some)) == 50 and set(some) <= set(everything)
    assert some == training_prompts([str(messy)], limit=50)  # seeded


@pytest.mark.parametrize("n", [30, 40, 50])
def test_held_out_samples_of_the_training_distribution_are_not_flagged(n):
    train = training_prompts([str(INTENTS_TRAIN)])
    held_out = training_prompts([str(INTENTS_TEST)])
    for seed in range(5):
        report = check_drift(train, sample(held_out, n, seed))
        assert not report.drifted, [s.as_dict() for s in report.signals]
        assert all(abs(s.score) < 0.15 for s in report.signals)


@pytest.mark.parametrize("n", [30, 50])
def test_deliberately_different_traffic_is_flagged(n):
    train = training_prompts([str(INTENTS_TRAIN)])
    for different in (sample(general_prompts(), n, 0), code_lines()[:n]):
        report = check_drift(train, different)
        vocabulary = next(s for s in report.signals if s.name == "vocabulary")
        assert report.drifted and vocabulary.flagged, [s.as_dict() for s in report.signals]
        assert vocabulary.score > 2 * DEFAULT_THRESHOLDS["vocabulary"]


def test_the_small_sample_bias_is_measured_not_ignored():
    """30 prompts from the training distribution are far from the whole set in raw JS (a small sample
    uses a sliver of the vocabulary); the held-out baseline measures that and takes it off."""
    report = check_drift(training_prompts([str(INTENTS_TRAIN)]), sample(training_prompts([str(INTENTS_TEST)]), 30, 1))
    vocabulary = next(s for s in report.signals if s.name == "vocabulary")
    assert vocabulary.raw > 0.3 and vocabulary.baseline > 0.3
    assert abs(vocabulary.score) < 0.05 and not vocabulary.flagged


def test_the_command_exits_0_on_same_traffic_and_3_on_drift(tmp_path, capsys):
    same = write_log(tmp_path / "same.db", sample(training_prompts([str(INTENTS_TEST)]), 40, 0))
    out = tmp_path / "same.json"
    assert main(["monitor", "drift", "--db", str(same), "--data", str(INTENTS_TRAIN), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["verdict"] == "no drift" and result["production_prompts"] == 41  # the failed request's prompt too
    assert {s["signal"] for s in result["signals"]} == {"length", "vocabulary"}
    assert "surprise" in result["skipped"]
    assert "Jensen-Shannon" in result["signals"][1]["measure"]
    capsys.readouterr()

    different = write_log(tmp_path / "code.db", code_lines()[:40])
    out = tmp_path / "code.json"
    assert main(["monitor", "drift", "--db", str(different), "--data", str(INTENTS_TRAIN), "--out", str(out)]) == 3
    assert "DRIFT" in capsys.readouterr().out
    assert json.loads(out.read_text())["drifted"] is True
    # a higher bar for every signal, and it passes
    assert main(["monitor", "drift", "--db", str(different), "--data", str(INTENTS_TRAIN),
                 "--threshold", "vocabulary=0.9", "--threshold", "length=0.9"]) == 0


def test_the_training_data_can_come_from_a_run_file(tmp_path, run_config):
    config = run_config(**{"data.train": str(INTENTS_TRAIN), "data.validation": []})
    same = write_log(tmp_path / "same.db", sample(training_prompts([str(INTENTS_TEST)]), 40, 2))
    assert main(["monitor", "drift", "--db", str(same), "--config", str(config)]) == 0


def test_bad_arguments_and_empty_windows(tmp_path, capsys):
    log = write_log(tmp_path / "requests.db", ["Where is my parcel?"] * 5)
    assert main(["monitor", "drift", "--db", str(log), "--data", str(INTENTS_TRAIN), "--threshold", "mood=1"]) == 2
    assert "expected SIGNAL=VALUE" in said(capsys)
    assert main(["monitor", "drift", "--db", str(log)]) == 2
    assert "--data TRAIN_FILE" in said(capsys)
    assert main(["monitor", "drift", "--db", str(log), "--data", str(INTENTS_TRAIN), "--since", "2099-01-01"]) == 0
    assert "no prompts logged since 2099-01-01" in said(capsys)


def test_perplexities_are_batched_without_changing_them(tiny_model, one_thread):
    from tuneforge.models.load import load_for_inference

    model, tokenizer = load_for_inference(str(tiny_model), dtype="float32")
    texts = ["Where is my order?", "Can I return the blue towels I bought last week, please?", "Hi"]
    together = prompt_perplexities(model, tokenizer, texts)
    alone = np.concatenate([prompt_perplexities(model, tokenizer, [t]) for t in texts])
    assert np.all(np.isfinite(together)) and np.all(together > 1)
    np.testing.assert_allclose(together, alone, rtol=1e-4)


def test_the_surprise_signal_is_measured_with_a_model(tiny_model, one_thread):
    """A random model cannot tell drift; this checks that the signal is computed and is a share."""
    from tuneforge.models.load import load_for_inference

    model, tokenizer = load_for_inference(str(tiny_model), dtype="float32")
    train = training_prompts([str(INTENTS_TRAIN)])[:80]
    report = check_drift(train, code_lines()[:20], model=model, tokenizer=tokenizer)
    surprise = next(s for s in report.signals if s.name == "surprise")
    assert 0 <= surprise.raw <= 1 and 0 <= surprise.baseline <= surprise.baseline_high <= 1
    assert "tokens" in report.signals[0].measure and not report.skipped


@pytest.mark.slow
def test_the_embedded_model_finds_scrambled_prompts_surprising(one_thread):
    """Scrambled held-out prompts keep their words (vocabulary barely moves) but read as nonsense:
    the model's perplexity flags them; the same prompts in order are not flagged."""
    from tuneforge.models.load import load_for_inference

    model, tokenizer = load_for_inference("embedded:smollm2-135m-instruct", dtype="float32")
    train = sample(training_prompts([str(INTENTS_TRAIN)]), 150, 0)
    held_out = sample(training_prompts([str(INTENTS_TEST)]), 40, 0)
    rng = np.random.default_rng(0)
    scrambled = [" ".join(rng.permutation(text.split())) for text in held_out]
    same = check_drift(train, held_out, model=model, tokenizer=tokenizer)
    assert not same.drifted, [s.as_dict() for s in same.signals]
    different = check_drift(train, scrambled, model=model, tokenizer=tokenizer)
    surprise = next(s for s in different.signals if s.name == "surprise")
    assert surprise.flagged and surprise.raw > 0.5, surprise.as_dict()
