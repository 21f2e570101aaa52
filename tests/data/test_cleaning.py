"""Cleaning: exact and near duplicates, PII redaction without false positives, contamination."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tuneforge.data.cleaning import (
    ContaminationIndex,
    ExactDuplicates,
    NearDuplicates,
    NearDuplicateSettings,
    Overlap,
    bands_and_rows,
    luhn_valid,
    normalize,
    redact_pii,
)

WORDS = ("river stone lamp violet engine harbor cobalt meadow lantern quiet orbit saddle thunder "
         "pepper canyon ribbon falcon marble whisper garden copper island velvet signal").split()
OTHER_WORDS = ("table window seven purple number chair orange forest bridge summer winter laptop "
               "kettle mirror candle pencil rocket button wallet tunnel basket ladder shovel").split()


def random_text(words: tuple[str, ...] | list[str], count: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(words) + str(rng.randrange(50)) for _ in range(count))


# --- normalize and exact duplicates -----------------------------------------------------------


def test_normalize_casefolds_collapses_whitespace_and_applies_nfkc():
    assert normalize("  Hello\t\tWORLD\n\u00a0 again ") == "hello world again"
    assert normalize("Straße") == "strasse"
    assert normalize("ﬁne ①") == "fine 1"  # ligature and circled digit under NFKC


def test_exact_duplicates_catch_case_and_whitespace_variants():
    seen = ExactDuplicates()
    assert seen.first_seen("The quick brown fox.") is True
    assert seen.first_seen("the   QUICK brown\nfox.") is False
    assert seen.first_seen("  The quick brown fox.  ") is False
    assert seen.first_seen("The quick brown fox!") is True
    assert seen.duplicates == 2
    assert len(seen) == 2


# --- near duplicates --------------------------------------------------------------------------


def test_bands_and_rows_fit_the_signature_and_rise_with_threshold():
    bands, rows = bands_and_rows(0.85, 128)
    assert bands * rows <= 128
    assert (bands, rows) == (8, 16)
    assert bands_and_rows(0.5, 128)[1] < rows < bands_and_rows(0.95, 128)[1]


def test_near_duplicates_find_a_one_word_change_at_the_end_with_default_settings():
    # The last word is in one of 56 shingles: true Jaccard 55/57 = 0.96.
    text = random_text(WORDS, 60, seed=2)
    words = text.split()
    words[-1] = "completelydifferent"
    near = NearDuplicates(NearDuplicateSettings())
    assert near.check("original", text) is None
    assert near.check("paraphrase", " ".join(words)) == "original"
    assert len(near) == 1  # the duplicate is not indexed


def test_near_duplicates_find_a_one_word_change_in_the_middle():
    # A mid-text change touches 5 of 56 shingles: true Jaccard 51/61 = 0.84.
    text = random_text(WORDS, 60, seed=2)
    words = text.split()
    words[30] = "completelydifferent"
    near = NearDuplicates(NearDuplicateSettings(threshold=0.7))
    assert near.check("original", text) is None
    assert near.check("paraphrase", " ".join(words)) == "original"
    estimate = float(np.mean(near.signature(text) == near.signature(" ".join(words))))
    assert estimate == pytest.approx(51 / 61, abs=0.12)


def test_near_duplicates_keep_unrelated_texts():
    near = NearDuplicates()
    assert near.check("a", random_text(WORDS, 60, seed=3)) is None
    assert near.check("b", random_text(OTHER_WORDS, 60, seed=4)) is None
    assert near.check("c", random_text(WORDS, 60, seed=5)) is None  # same vocabulary, other text
    assert len(near) == 3


def test_near_duplicates_report_the_most_similar_kept_text_not_the_first():
    # 100 words, 96 shingles. Changing the first 10 / last 18 words gives true Jaccard to the
    # original of 86/106 = 0.81 and 78/114 = 0.68, and 68/124 = 0.55 to each other.
    base = random_text(WORDS, 100, seed=6).split()
    near_start = ["head%d" % i for i in range(10)] + base[10:]
    near_end = base[:82] + ["tail%d" % i for i in range(18)]
    near = NearDuplicates(NearDuplicateSettings(threshold=0.62, num_perm=512))
    assert near.check("end", " ".join(near_end)) is None
    assert near.check("start", " ".join(near_start)) is None  # 0.55 < 0.62: kept
    assert near.check("query", " ".join(base)) == "start"


def shingles(text: str, k: int = 5) -> set[str]:
    words = normalize(text).split()
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def test_minhash_estimate_is_unbiased_across_seeds():
    # The fraction of equal signature slots estimates Jaccard similarity; averaged over many
    # seeds it must sit on the true value (a weak permutation family drifts high).
    base = random_text(WORDS, 100, seed=20).split()
    first = " ".join(["head%d" % i for i in range(10)] + base[10:])
    second = " ".join(base[:82] + ["tail%d" % i for i in range(18)])
    a, b = shingles(first), shingles(second)
    jaccard = len(a & b) / len(a | b)
    assert jaccard == pytest.approx(68 / 124)
    estimates = []
    for seed in range(60):
        near = NearDuplicates(NearDuplicateSettings(seed=seed))
        estimates.append(float(np.mean(near.signature(first) == near.signature(second))))
    assert float(np.mean(estimates)) == pytest.approx(jaccard, abs=0.02)


def test_near_duplicates_report_exactly_the_confirmed_lsh_candidates():
    # Three words changed in 100 (true Jaccard ~0.73): now and then a band matches by chance, and
    # the whole-signature check must then turn the candidate down.
    base = random_text(WORDS, 100, seed=30)
    rng = random.Random(31)
    rejected = reported = 0
    for i in range(300):
        words = base.split()
        for position in rng.sample(range(100), 3):
            words[position] = f"x{i}y{position}"
        variant = " ".join(words)
        near = NearDuplicates()
        near.check("base", base)
        sig_base, sig_variant = near.signature(base), near.signature(variant)
        rows = near.rows
        shares_band = any(
            np.array_equal(sig_base[k * rows:(k + 1) * rows], sig_variant[k * rows:(k + 1) * rows])
            for k in range(near.bands)
        )
        confirmed = float(np.mean(sig_base == sig_variant)) >= near.settings.threshold
        assert near.check("variant", variant) == ("base" if shares_band and confirmed else None)
        rejected += shares_band and not confirmed
        reported += shares_band and confirmed
    assert rejected > 0
    assert reported < rejected


def test_near_duplicates_short_texts_are_one_shingle():
    near = NearDuplicates()
    assert near.check("a", "Hello there") is None
    assert near.check("b", "hello   THERE") == "a"
    assert near.check("c", "hello there friend") is None


def test_near_duplicates_are_deterministic_given_the_seed():
    text = random_text(WORDS, 100, seed=8)
    first = NearDuplicates(NearDuplicateSettings(seed=3)).signature(text)
    again = NearDuplicates(NearDuplicateSettings(seed=3)).signature(text)
    other = NearDuplicates(NearDuplicateSettings(seed=4)).signature(text)
    assert first.shape == (128,)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)

    texts = [random_text(WORDS, 40, seed=s) for s in range(20)]
    texts += [t.replace(t.split()[-1], "tail", 1) for t in texts[:10]]

    def run(seed: int) -> list[str | None]:
        near = NearDuplicates(NearDuplicateSettings(seed=seed, threshold=0.7))
        return [near.check(str(i), t) for i, t in enumerate(texts)]

    answers = run(0)
    assert answers == run(0)
    assert answers[20:] == [str(i) for i in range(10)]
    assert answers[:20] == [None] * 20


# --- PII --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "counts"),
    [
        ("write to Jane.Doe+news@mail.example.co.uk today",
         "write to <EMAIL> today", {"email": 1}),
        ("call +44 20 7946 0958 or +1-202-555-0143.", "call <PHONE> or <PHONE>.", {"phone": 2}),
        ("(202) 555-0143, 202-555-0143 and 202.555.0143",
         "<PHONE>, <PHONE> and <PHONE>", {"phone": 3}),
        ("host 192.168.0.1:8080 and 10.0.0.255.", "host <IP_ADDRESS>:8080 and <IP_ADDRESS>.",
         {"ip_address": 2}),
        ("v6 2001:db8::1, 2001:0db8:85a3:0000:0000:8a2e:0370:7334 and ::1",
         "v6 <IP_ADDRESS>, <IP_ADDRESS> and <IP_ADDRESS>", {"ip_address": 3}),
        ("card 4539 1488 0343 6467 or 4539-1488-0343-6467 or 4539148803436467",
         "card <CREDIT_CARD> or <CREDIT_CARD> or <CREDIT_CARD>", {"credit_card": 3}),
        ("amex 3782 822463 10005", "amex <CREDIT_CARD>", {"credit_card": 1}),
        ("mail a@b.io from 8.8.8.8, card 4539148803436467, phone 202-555-0143",
         "mail <EMAIL> from <IP_ADDRESS>, card <CREDIT_CARD>, phone <PHONE>",
         {"email": 1, "ip_address": 1, "credit_card": 1, "phone": 1}),
    ],
)
def test_redact_pii_replaces_each_kind_and_counts_it(text, expected, counts):
    assert redact_pii(text) == (expected, counts)


@pytest.mark.parametrize(
    "text",
    [
        "In 2024 we shipped it.",
        "Upgrade to version 1.2.3 now.",
        "Order 12345 is ready.",
        "The date is 2024-05-01.",
        "Meet at 10:30, or 10:30:45.",
        "Card 4539 1488 0343 6468 fails Luhn, and so does 4539148803436468.",
        "Not an address: 999.1.1.1 or 1.2.3.4.5",
        "C++ std::vector and MAC 00:1A:2B:3C:4D:5E",
        "Timestamp 1714567890123 and ISO time 2024-05-01T10:30:00Z",
        "",
    ],
)
def test_redact_pii_leaves_lookalikes_unchanged(text):
    assert redact_pii(text) == (text, {})


def test_valid_card_is_never_labelled_a_phone():
    # "+" and 13 digits also reads as an international phone number; the card rule goes first.
    assert redact_pii("pay +4222222222222 now") == ("pay +<CREDIT_CARD> now", {"credit_card": 1})
    assert redact_pii("pay with 5555 5555 5555 4444") == ("pay with <CREDIT_CARD>", {"credit_card": 1})
    # The same digits failing Luhn are left to the phone rule.
    assert redact_pii("pay +4222222222223 now") == ("pay <PHONE> now", {"phone": 1})


def test_luhn_on_known_numbers():
    assert luhn_valid("4539 1488 0343 6467")
    assert luhn_valid("4539148803436467")
    assert luhn_valid("79927398713")
    assert luhn_valid("5555-5555-5555-4444")
    assert not luhn_valid("4539 1488 0343 6468")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("4539x488")
    assert not luhn_valid("")


# --- contamination ----------------------------------------------------------------------------


def test_contamination_finds_an_eval_prompt_copied_into_training_text():
    eval_prompt = random_text(WORDS, 30, seed=10)
    index = ContaminationIndex(n=8)
    index.add_eval("eval-1", eval_prompt)
    index.add_eval("eval-2", random_text(OTHER_WORDS, 30, seed=11))
    train = "Please answer this question carefully: " + eval_prompt.upper() + " Thanks a lot, friend."
    assert index.check_train("train-7", train) == [Overlap("eval-1", "train-7", 1.0)]


def test_contamination_reports_partial_overlap_by_the_eval_prompts_share():
    eval_words = random_text(WORDS, 27, seed=12).split()  # 20 distinct 8-grams
    index = ContaminationIndex(n=8)
    index.add_eval("e", " ".join(eval_words))
    half = " ".join(eval_words[:17])  # its first 10 8-grams
    assert index.check_train("t", half) == [Overlap("e", "t", 0.5)]
    assert index.check_train("t", half, min_shared=0.6) == []


def test_contamination_ignores_unrelated_training_text():
    index = ContaminationIndex()
    index.add_eval("eval-1", random_text(WORDS, 30, seed=13))
    assert index.check_train("train-1", random_text(OTHER_WORDS, 50, seed=14)) == []
    assert index.check_train("train-2", random_text(WORDS, 50, seed=15)) == []


def test_contamination_short_eval_prompt_must_appear_whole():
    index = ContaminationIndex(n=8)
    index.add_eval("short", "What is the capital of France?")
    assert index.check_train("t1", "Quiz: what is the capital   of FRANCE? Paris.") == [
        Overlap("short", "t1", 1.0)
    ]
    assert index.check_train("t2", "what is the capital of france?") == [Overlap("short", "t2", 1.0)]
    assert index.check_train("t3", "What is the capital of Spain?") == []
    assert index.check_train("t4", "What is the capital?") == []
