"""ISC2021 metrics (method.md §5) against the worked vector and a loop-based reference."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copydistill.data.disc import GroundTruthPair, canonical_id, read_ground_truth
from copydistill.errors import CopydistillError
from copydistill.eval.metrics import (
    NOT_FOUND_RANK,
    DuplicatePredictionError,
    Metrics,
    Prediction,
    evaluate,
)

TOL = 1e-12


def G(q: str, r: str) -> GroundTruthPair:
    return GroundTruthPair(q, r)


def P(q: str, r: str, s: float) -> Prediction:
    return Prediction(q, r, s)


# --------------------------------------------------------------------------------------------
# Brute-force reference, following the §5 text literally (plain loops, no numpy).
# --------------------------------------------------------------------------------------------


def reference_metrics(gt, predictions) -> dict:
    gt = [(g.query, g.reference) for g in gt if g.reference]  # §5.1: empty references dropped
    n_gt = len(gt)
    gt_set = set(gt)

    # §5.2 step 1-2: label, sort the pair (score, not y) ascending, then reverse.
    items = [(p.score, (p.query, p.reference) in gt_set) for p in predictions]
    keyed = sorted(range(len(items)), key=lambda i: (items[i][0], not items[i][1]))
    keyed.reverse()
    ordered = [items[i] for i in keyed]

    # §5.2 step 3-4: µAP = (1/|GT|) * sum of precision at each positive.
    tp = 0
    precisions, recalls, thresholds = [], [], []
    ap_sum = 0.0
    for i, (score, label) in enumerate(ordered, start=1):
        if label:
            tp += 1
        precision = tp / i
        recall = tp / n_gt if n_gt else 0.0
        if label:
            ap_sum += precision
        precisions.append(precision)
        recalls.append(recall)
        thresholds.append(score)
    ap = ap_sum / n_gt if n_gt else 0.0

    # §5.3: maximum recall among prefixes with precision >= 0.9, first index on ties.
    best = None
    for i in range(len(ordered)):
        if precisions[i] >= 0.9 and (best is None or recalls[i] > recalls[best]):
            best = i
    r_p90 = None if best is None else recalls[best]
    t_p90 = None if best is None else thresholds[best]

    # §5.4: rank-based recalls.
    ranks = []
    for q, r in gt:
        preds_q = [p for p in predictions if p.query == q]
        rank = NOT_FOUND_RANK
        if preds_q:
            first = None
            for p in preds_q:
                if p.reference == r:
                    first = p
                    break
            if first is not None:
                rank = sum(1 for p in preds_q if p.score >= first.score) - 1
        ranks.append(rank)
    r1 = sum(1 for k in ranks if k == 0) / n_gt if n_gt else 0.0
    r10 = sum(1 for k in ranks if k < 10) / n_gt if n_gt else 0.0

    return {
        "average_precision": ap,
        "recall_at_p90": r_p90,
        "threshold_at_p90": t_p90,
        "recall_at_rank1": r1,
        "recall_at_rank10": r10,
        "num_predictions": len(predictions),
        "num_gt": n_gt,
    }


def assert_close(got: Metrics, want: dict) -> None:
    got_d = got.as_dict()
    assert set(got_d) == set(want)
    for key, value in want.items():
        if value is None:
            assert got_d[key] is None, (key, got_d[key])
        elif isinstance(value, int) and not isinstance(value, bool):
            assert got_d[key] == value, (key, got_d[key], value)
        else:
            assert got_d[key] is not None, key
            assert abs(got_d[key] - value) <= TOL, (key, got_d[key], value)


# --------------------------------------------------------------------------------------------
# §5.5 worked vector
# --------------------------------------------------------------------------------------------

WORKED_GT = [G("Q1", "R1"), G("Q2", "R2"), G("Q3", "R3")]
WORKED_PRED = [
    P("Q1", "R1", 0.9),
    P("Q1", "R5", 0.9),
    P("Q2", "R7", 0.8),
    P("Q2", "R2", 0.7),
    P("Q4", "R9", 0.6),
]


def test_worked_vector():
    m = evaluate(WORKED_GT, WORKED_PRED)
    assert abs(m.average_precision - 1 / 3) <= TOL
    assert m.recall_at_p90 is None
    assert m.threshold_at_p90 is None
    assert m.recall_at_rank1 == 0.0
    assert abs(m.recall_at_rank10 - 2 / 3) <= TOL
    assert m.num_gt == 3
    assert m.num_predictions == 5


def test_worked_vector_matches_reference():
    assert_close(evaluate(WORKED_GT, WORKED_PRED), reference_metrics(WORKED_GT, WORKED_PRED))


def test_reference_implementation_on_worked_vector():
    # Guards the reference itself against the published numbers.
    ref = reference_metrics(WORKED_GT, WORKED_PRED)
    assert abs(ref["average_precision"] - 1 / 3) <= TOL
    assert ref["recall_at_p90"] is None
    assert ref["recall_at_rank1"] == 0.0
    assert abs(ref["recall_at_rank10"] - 2 / 3) <= TOL


# --------------------------------------------------------------------------------------------
# Property tests against the reference
# --------------------------------------------------------------------------------------------

SCORES = [0.1, 0.2, 0.5, 0.9]
QUERIES = [f"Q{i}" for i in range(6)]  # Q0..Q3 may have GT, Q4, Q5 are distractor-only
REFS = [f"R{i}" for i in range(6)]


@st.composite
def gt_and_predictions(draw):
    gt_queries = QUERIES[:4]
    gt = []
    for q in gt_queries:
        refs = draw(st.lists(st.sampled_from(REFS), unique=True, max_size=3))
        gt.extend(G(q, r) for r in refs)
        if draw(st.booleans()):
            gt.append(G(q, ""))  # empty-reference row: must be dropped
    pairs = [(q, r) for q in QUERIES for r in REFS]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    # Bias towards positives so that the precision >= 0.9 branch is exercised too.
    extra_pos = draw(
        st.lists(st.sampled_from([(g.query, g.reference) for g in gt if g.reference] or [("Q0", "R0")]),
                 unique=True, max_size=6)
    )
    chosen = list(dict.fromkeys(extra_pos + chosen))
    scores = draw(st.lists(st.sampled_from(SCORES), min_size=len(chosen), max_size=len(chosen)))
    preds = [P(q, r, s) for (q, r), s in zip(chosen, scores)]
    preds = draw(st.permutations(preds))
    return gt, preds


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gt_and_predictions())
def test_evaluate_matches_reference(data):
    gt, preds = data
    assert_close(evaluate(gt, preds), reference_metrics(gt, preds))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(QUERIES), st.sampled_from(REFS), st.floats(-5, 5, allow_nan=False)),
        unique_by=lambda t: (t[0], t[1]),
        max_size=30,
    ),
    st.lists(st.tuples(st.sampled_from(QUERIES[:4]), st.sampled_from(REFS)), unique=True, max_size=10),
)
def test_evaluate_matches_reference_continuous_scores(raw_preds, raw_gt):
    preds = [P(q, r, s) for q, r, s in raw_preds]
    gt = [G(q, r) for q, r in raw_gt]
    assert_close(evaluate(gt, preds), reference_metrics(gt, preds))


@settings(max_examples=100, deadline=None)
@given(gt_and_predictions(), st.randoms(use_true_random=False))
def test_order_invariance(data, rnd):
    gt, preds = data
    shuffled = list(preds)
    rnd.shuffle(shuffled)
    gt_shuffled = list(gt)
    rnd.shuffle(gt_shuffled)
    a = evaluate(gt, preds).as_dict()
    b = evaluate(gt_shuffled, shuffled).as_dict()
    for key in a:
        if a[key] is None:
            assert b[key] is None
        else:
            assert abs(a[key] - b[key]) <= TOL, key


def test_order_invariance_worked_vector_all_permutations():
    import itertools

    base = evaluate(WORKED_GT, WORKED_PRED)
    for perm in itertools.permutations(WORKED_PRED):
        assert evaluate(WORKED_GT, list(perm)) == base


# --------------------------------------------------------------------------------------------
# Pessimistic ties
# --------------------------------------------------------------------------------------------


def test_pessimistic_ties_in_ap():
    gt = [G("Q1", "R1")]
    # one positive and one negative with the same score, in both list orders
    for preds in ([P("Q1", "R1", 0.5), P("Q2", "R2", 0.5)], [P("Q2", "R2", 0.5), P("Q1", "R1", 0.5)]):
        m = evaluate(gt, preds)
        # pessimistic: negative first -> precision 1/2 at the positive; optimistic would give 1.0
        assert abs(m.average_precision - 0.5) <= TOL
        # precision never reaches 0.9 with the negative first
        assert m.recall_at_p90 is None
        assert m.threshold_at_p90 is None
        # the rank of the positive counts the tie (same query)? different query here -> rank 0
        assert m.recall_at_rank1 == 1.0


def test_pessimistic_ties_in_rank():
    gt = [G("Q1", "R1")]
    preds = [P("Q1", "R1", 0.5), P("Q1", "R2", 0.5)]
    m = evaluate(gt, preds)
    assert m.recall_at_rank1 == 0.0  # the tie counts against the positive
    assert m.recall_at_rank10 == 1.0
    assert abs(m.average_precision - 0.5) <= TOL


def test_ties_broken_within_larger_groups():
    gt = [G("Q1", "R1"), G("Q2", "R2")]
    preds = [
        P("Q1", "R1", 0.9),
        P("Q2", "R2", 0.5),
        P("Q3", "R3", 0.5),
        P("Q4", "R4", 0.5),
    ]
    # sorted labels: T, F, F, T -> AP = (1/2)(1/1 + 2/4) = 0.75
    m = evaluate(gt, preds)
    assert abs(m.average_precision - 0.75) <= TOL
    assert m.recall_at_p90 == 0.5
    assert m.threshold_at_p90 == 0.9


# --------------------------------------------------------------------------------------------
# Errors and input handling
# --------------------------------------------------------------------------------------------


def test_duplicate_predictions_raise():
    preds = [P("Q1", "R1", 0.5), P("Q1", "R2", 0.4), P("Q1", "R1", 0.3)]
    with pytest.raises(DuplicatePredictionError) as info:
        evaluate([G("Q1", "R1")], preds)
    assert isinstance(info.value, CopydistillError)
    assert "Q1" in str(info.value) and "R1" in str(info.value)


def test_same_reference_different_queries_is_not_duplicate():
    preds = [P("Q1", "R1", 0.5), P("Q2", "R1", 0.5)]
    evaluate([G("Q1", "R1")], preds)  # no raise


def test_empty_reference_rows_dropped(tmp_path):
    csv_path = tmp_path / "gt.csv"
    csv_path.write_text(
        "query_id,reference_id\n"
        "Q00001,R000001\n"
        "Q00002,\n"
        "Q00003,R000003\n"
        "Q00004,\n"
        "Q00005,R000005\n"
    )
    gt = read_ground_truth(csv_path)
    assert gt == [G("Q00001", "R000001"), G("Q00003", "R000003"), G("Q00005", "R000005")]
    preds = [P("Q00001", "R000001", 0.9), P("Q00002", "R000009", 0.8)]
    m = evaluate(gt, preds)
    assert m.num_gt == 3
    # sorted labels T, F -> AP = (1/3) * 1
    assert abs(m.average_precision - 1 / 3) <= TOL
    assert abs(m.recall_at_rank1 - 1 / 3) <= TOL
    assert abs(m.recall_at_p90 - 1 / 3) <= TOL
    assert m.threshold_at_p90 == 0.9


def test_read_ground_truth_with_utf8_bom_header(tmp_path):
    csv_path = tmp_path / "gt.csv"
    csv_path.write_bytes("query_id,reference_id\nQ1,R1\nQ2,\n".encode("utf-8-sig"))
    assert read_ground_truth(csv_path) == [G("Q00001", "R000001")]


def test_read_ground_truth_canonicalises_ids(tmp_path):
    csv_path = tmp_path / "gt.csv"
    csv_path.write_text("query_id,reference_id\nQ1,R2\nQ3,\n")
    assert read_ground_truth(csv_path) == [G("Q00001", "R000002")]


def test_evaluate_drops_empty_reference_pairs_itself():
    gt = [G("Q1", "R1"), G("Q2", ""), G("Q3", "")]
    m = evaluate(gt, [P("Q1", "R1", 1.0), P("Q2", "R5", 0.5)])
    assert m.num_gt == 1
    assert m.average_precision == 1.0
    assert m.recall_at_rank1 == 1.0


# --------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------


def test_no_predictions():
    m = evaluate(WORKED_GT, [])
    assert m.average_precision == 0.0
    assert m.recall_at_p90 is None
    assert m.threshold_at_p90 is None
    assert m.recall_at_rank1 == 0.0
    assert m.recall_at_rank10 == 0.0
    assert m.num_predictions == 0
    assert m.num_gt == 3


def test_all_predictions_correct_and_all_gt_predicted():
    gt = [G("Q1", "R1"), G("Q1", "R2"), G("Q2", "R2"), G("Q3", "R3")]
    preds = [P("Q1", "R1", 0.9), P("Q1", "R2", 0.1), P("Q2", "R2", 0.5), P("Q3", "R3", 0.5)]
    m = evaluate(gt, preds)
    assert abs(m.average_precision - 1.0) <= TOL
    assert m.recall_at_p90 == 1.0
    assert m.threshold_at_p90 == 0.1
    # Q1/R2 has rank 1 (one better prediction of Q1): 3 of 4 at rank 0
    assert abs(m.recall_at_rank1 - 0.75) <= TOL
    assert m.recall_at_rank10 == 1.0


def test_all_predictions_correct_but_gt_missing_some():
    gt = [G("Q1", "R1"), G("Q2", "R2")]
    m = evaluate(gt, [P("Q1", "R1", 0.9)])
    assert abs(m.average_precision - 0.5) <= TOL
    assert m.recall_at_p90 == 0.5
    assert m.threshold_at_p90 == 0.9
    assert m.recall_at_rank1 == 0.5


def test_gt_empty():
    preds = [P("Q1", "R1", 0.9), P("Q2", "R2", 0.5)]
    for gt in ([], [G("Q1", ""), G("Q2", "")]):
        m = evaluate(gt, preds)
        assert m.average_precision == 0.0
        assert m.recall_at_p90 is None
        assert m.threshold_at_p90 is None
        assert m.recall_at_rank1 == 0.0
        assert m.recall_at_rank10 == 0.0
        assert m.num_gt == 0
        assert m.num_predictions == 2


def test_gt_and_predictions_empty():
    m = evaluate([], [])
    assert m.average_precision == 0.0
    assert m.recall_at_p90 is None
    assert m.num_gt == 0 and m.num_predictions == 0


def test_rank_10_boundary():
    gt = [G("Q1", "R1")]
    # 9 better negatives -> rank 9 (< 10); 10 better negatives -> rank 10
    for n_neg, expected in ((9, 1.0), (10, 0.0)):
        preds = [P("Q1", f"N{i}", 0.9) for i in range(n_neg)] + [P("Q1", "R1", 0.5)]
        random.Random(n_neg).shuffle(preds)
        m = evaluate(gt, preds)
        assert m.recall_at_rank10 == expected
        assert m.recall_at_rank1 == 0.0


def test_distractor_queries_only_add_false_positives():
    gt = [G("Q1", "R1")]
    base = evaluate(gt, [P("Q1", "R1", 0.5)])
    more = evaluate(gt, [P("Q1", "R1", 0.5), P("Q9", "R1", 0.6)])
    assert base.average_precision == 1.0
    assert abs(more.average_precision - 0.5) <= TOL
    assert more.recall_at_rank1 == 1.0  # other queries do not affect ranks


def test_metrics_as_dict_keys():
    d = evaluate(WORKED_GT, WORKED_PRED).as_dict()
    assert set(d) == {
        "average_precision",
        "recall_at_p90",
        "threshold_at_p90",
        "recall_at_rank1",
        "recall_at_rank10",
        "num_predictions",
        "num_gt",
    }


# --------------------------------------------------------------------------------------------
# canonical_id
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stem, expected",
    [
        ("Q12", "Q00012"),
        ("R7", "R000007"),
        ("T3", "T000003"),
        ("Q00012", "Q00012"),
        ("R000007", "R000007"),
        ("Q0000012", "Q00012"),
        ("Q123456", "Q123456"),
        ("img_001", "img_001"),
        ("q12", "q12"),
        ("Q12a", "Q12a"),
        ("Q", "Q"),
        ("X12", "X12"),
        ("", ""),
    ],
)
def test_canonical_id(stem, expected):
    assert canonical_id(stem) == expected


# --------------------------------------------------------------------------------------------
# R@P90: first index among prefixes with the same maximum recall
# --------------------------------------------------------------------------------------------


def test_p90_first_index_on_recall_ties():
    gt = [G(f"Q{i}", f"R{i}") for i in range(12)]
    preds = [P(f"Q{i}", f"R{i}", 0.9) for i in range(10)]
    preds.append(P("Q99", "R99", 0.5))  # prefix 11: precision 10/11 >= 0.9, same recall
    m = evaluate(gt, preds)
    assert abs(m.recall_at_p90 - 10 / 12) <= TOL
    assert m.threshold_at_p90 == 0.9  # the first prefix with that recall, not the 0.5 one


@st.composite
def many_positives(draw):
    n_gt = draw(st.integers(1, 30))
    gt = [G(f"Q{i}", f"R{i}") for i in range(n_gt)]
    hits = draw(st.lists(st.integers(0, n_gt - 1), unique=True))
    n_neg = draw(st.integers(0, 4))
    preds = [P(f"Q{i}", f"R{i}", draw(st.sampled_from(SCORES))) for i in hits]
    preds += [P(f"Q{j}", "Rneg", draw(st.sampled_from(SCORES))) for j in range(n_neg)]
    return gt, draw(st.permutations(preds))


@settings(max_examples=200, deadline=None)
@given(many_positives())
def test_evaluate_matches_reference_high_precision(data):
    gt, preds = data
    assert_close(evaluate(gt, preds), reference_metrics(gt, preds))
