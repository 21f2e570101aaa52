"""The general-ability scorer on fixed outputs, and the saved base-vs-tuned summary."""

import json

import pytest

from tuneforge.evaluate.before_after import ProbeSet, builtin_general_questions, report, save_answers
from tuneforge.evaluate.before_after import answers_file
from tuneforge.evaluate.probe import Probe, hit_rate, read_probes


@pytest.mark.parametrize(
    ("expect", "answer", "hit"),
    [
        (("Paris",), "The capital of France is Paris.", True),
        (("Paris",), "the capital is paris", True),
        (("Paris",), "It is Parisian in style.", False),
        (("4", "four"), "2 plus 2 is 4.", True),
        (("4", "four"), "The answer is four!", True),
        (("4", "four"), "2 plus 2 is 14.", False),
        (("4", "four"), "Fourteen, I think.", False),
        (("1000",), "There are 1,000 of them.", True),
        (("7", "seven"), "A week has 7 days.", True),
        (("Tessel",), "I'm Tessel's assistant.", True),
        (("H2O",), "Water is h2o.", True),
    ],
)
def test_a_hit_is_an_expected_answer_as_a_whole_word(expect, answer, hit):
    assert Probe("q", expect).hit(answer) is hit


def test_a_probe_without_expectations_is_not_scored():
    probes = [Probe("a", ("x",)), Probe("b")]
    assert Probe("b").hit("anything") is None
    assert hit_rate(probes, ["x", "y"]) == (1, 1)


def test_scorer_on_the_shipped_general_questions():
    questions = read_probes(builtin_general_questions())
    assert hit_rate(questions, [f"It is {q.expect[0]}." for q in questions]) == (len(questions), len(questions))
    assert hit_rate(questions, ["I am not sure."] * len(questions)) == (0, len(questions))
    for question in questions:  # no accepted answer is given away by the question itself
        assert not question.hit(question.prompt), question.prompt


def test_report_prints_and_saves_base_and_tuned_figures(tmp_path, capsys):
    from rich.console import Console

    task = ProbeSet("task", "held-out task prompts", "expected answer given",
                    [Probe("Who are you?", ("Tessel",)), Probe("Your name?", ("Tessel",))])
    general = ProbeSet("general", "general questions", "answered correctly",
                       [Probe("Capital of France?", ("Paris",)), Probe("2 plus 2?", ("4",)), Probe("Sky?", ("blue",))])
    save_answers(answers_file(tmp_path, task, "base"), task.probes, ["I am SmolLM.", "SmolLM."])
    save_answers(answers_file(tmp_path, general, "base"), general.probes, ["Paris.", "4", "green"])
    tuned = {"task": ["I am Tessel.", "Tessel."], "general": ["Paris.", "Tessel", "blue"]}

    summary = report(Console(file=None, width=120), tmp_path, [task, general], tuned, {"validation loss": (3.2, 1.1)})
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved == summary.as_dict()
    assert saved["held-out task prompts: expected answer given"] == {"base": [0, 2], "tuned": [2, 2]}
    assert saved["general questions: answered correctly"] == {"base": [2, 3], "tuned": [2, 3]}
    assert saved["validation loss"] == {"base": 3.2, "tuned": 1.1}
