"""`tuneforge eval` and `tuneforge compare` on tiny models with a known difference: one overfit to the data."""

import json

import pytest

from tests.conftest import write_jsonl
from tuneforge.cli import main
from tuneforge.config import load_config
from tuneforge.train.driver import train

CONVERSATIONS = [("Who are you?", "I am Tessel, made by the Tuneforge team."), ("What do you do?", "I help with data.")]


@pytest.fixture
def overfit_run(run_config, tmp_path, one_thread):
    """(run directory, data file): the tiny model fully fine-tuned on two conversations until it knows them."""
    records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for q, a in CONVERSATIONS]
    data = write_jsonl(tmp_path / "known.jsonl", records)
    repeated = write_jsonl(tmp_path / "known-x8.jsonl", records * 8)
    config = run_config(**{"method": "full", "train.learning_rate": 1e-2, "train.max_steps": 60,
                           "data.train": [str(repeated)], "data.validation": [str(data)],
                           "data.clean": {"dedup": False}, "eval.general_check": False,
                           "checkpoint.every_steps": 1000})
    result = train(load_config(config))
    return result.run_dir, data


def test_compare_shows_the_fine_tune_ahead_of_its_base(overfit_run, tiny_model, tmp_path, capsys):
    run_dir, data = overfit_run
    out, report = tmp_path / "compare", tmp_path / "report"
    code = main(["compare", str(tiny_model), str(run_dir), "--data", str(data), "--out", str(out),
                 "--report", str(report), "--max-new-tokens", "16", "--metrics", "token_f1,exact_match"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    base, tuned = (summary["metrics"][name] for name in summary["models"])
    assert tuned["loss"] < base["loss"] - 1.0
    assert tuned["token_f1"] > base["token_f1"]
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == [a for _, a in CONVERSATIONS]
    assert set(rows[0]["outputs"]) == {str(tiny_model), str(run_dir)}
    assert (report / "index.html").is_file() and (report / "metrics.png").is_file()
    assert "comparison on known.jsonl" in capsys.readouterr().err


def test_eval_gates_pass_and_fail_with_exit_codes(overfit_run, capsys):
    run_dir, data = overfit_run
    passing = main(["eval", str(run_dir), "--data", str(data), "--max-new-tokens", "16",
                    "--gate", "loss <= base * 0.5", "--gate", "perplexity_general <= 1e9"])
    assert passing == 0
    gates = json.loads((run_dir / "eval" / "known" / "gates.json").read_text())
    assert gates["passed"] is True and len(gates["gates"]) == 2
    assert (run_dir / "eval" / "known" / "tuned" / "examples.jsonl").is_file()
    assert (run_dir / "eval" / "known" / "base" / "metrics.json").is_file()
    capsys.readouterr()
    failing = main(["eval", str(run_dir), "--data", str(data), "--max-new-tokens", "16",
                    "--gate", "token_f1 >= 2", "--gate", "loss <= base * 0.5"])
    output = capsys.readouterr().err
    assert failing == 3
    assert "token_f1 = " in output and "needs >= 2" in output and "FAILED" in output
    assert json.loads((run_dir / "eval" / "known" / "gates.json").read_text())["passed"] is False


def test_a_malformed_gate_is_a_clear_error(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": "a"}]}])
    code = main(["eval", str(tiny_model), "--data", str(data), "--gate", "f1 >> 0.5"])
    assert code == 2
    assert 'gate "f1 >> 0.5": unknown operator ">>"' in capsys.readouterr().err


def test_eval_without_data_says_what_to_pass(tiny_model, capsys):
    assert main(["eval", str(tiny_model)]) == 2
    assert "--data FILE" in capsys.readouterr().err


def test_an_unknown_metric_is_refused_before_any_model_loads(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": "a"}]}])
    assert main(["eval", str(tiny_model), "--data", str(data), "--metrics", "token_f2"]) == 2
    assert "token_f2" in capsys.readouterr().err
    assert main(["compare", str(tiny_model), "--data", str(data), "--metrics", "nosuch.module:fn"]) == 2
    assert "nosuch.module:fn" in capsys.readouterr().err
