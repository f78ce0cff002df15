"""Each equation of the paper on tensors small enough to compute by hand."""

from __future__ import annotations

import math

import torch

from fernoise.methods import losses

# 5 samples, 3 classes. Rows are softmax outputs p = softmax(pcc(f(x_w))).
P = torch.tensor(
    [
        [0.7, 0.2, 0.1],  # y=0
        [0.5, 0.3, 0.2],  # y=0
        [0.1, 0.6, 0.3],  # y=1
        [0.3, 0.1, 0.6],  # y=0  (noisy-looking)
        [0.2, 0.2, 0.6],  # y=2
    ]
)
Y = torch.tensor([0, 0, 1, 0, 2])


def test_threshold_uses_only_samples_labelled_c():
    t = losses.class_thresholds(P, Y, 4)
    # class 0: samples 0, 1, 3 -> p[.,0] = 0.7, 0.5, 0.3 -> mean 0.5 (not the batch mean of column 0)
    assert math.isclose(t[0].item(), 0.5, rel_tol=1e-6)
    assert math.isclose(t[1].item(), 0.6, rel_tol=1e-6)  # only sample 2
    assert math.isclose(t[2].item(), 0.6, rel_tol=1e-6)  # only sample 4
    assert math.isnan(t[3].item())  # absent class
    batch_mean_col0 = P[:, 0].mean().item()
    assert not math.isclose(t[0].item(), batch_mean_col0)


def test_confident_mask_eq2():
    t = losses.class_thresholds(P, Y, 3)
    m = losses.confident_mask(P, Y, t)
    # class 0: 0.7 >= 0.5 yes, 0.5 >= 0.5 yes (>=), 0.3 no; singletons are always confident
    assert m.tolist() == [True, True, True, False, True]


def test_confident_mask_keeps_one_per_present_class():
    # Thresholds deliberately above every sample (as rounding could make them): the best of
    # each present class must survive.
    p = torch.tensor([[0.4, 0.6], [0.45, 0.55], [0.2, 0.8]])
    y = torch.tensor([0, 0, 1])
    m = losses.confident_mask(p, y, torch.tensor([0.99, 0.99]))
    assert m.tolist() == [False, True, True]


def test_supervised_loss_averages_over_confident_only():
    logits = torch.log(P)  # softmax(log P) = P since rows sum to 1
    mask = torch.tensor([True, True, True, False, True])
    got = losses.supervised_loss(logits, Y, mask).item()
    want = -(math.log(0.7) + math.log(0.5) + math.log(0.6) + math.log(0.6)) / 4
    assert math.isclose(got, want, rel_tol=1e-5)
    empty = losses.supervised_loss(logits.requires_grad_(), Y, torch.zeros(5, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


def test_topk_mask():
    q = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.5, 0.1, 0.15, 0.25]])
    assert losses.topk_mask(q, 2).tolist() == [[0, 1, 0, 1], [1, 0, 0, 1]]
    assert losses.topk_mask(q, 1).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]


def test_consistency_loss_eq4_by_hand():
    qw = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.5, 0.1, 0.15, 0.25], [0.25, 0.25, 0.25, 0.25]])
    qs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.4, 0.2, 0.2, 0.2], [0.1, 0.2, 0.3, 0.4]])
    select = torch.tensor([True, True, False])  # the third sample is confident: excluded
    got = losses.consistency_loss(torch.log(qw), torch.log(qs), select, k=2).item()
    s0 = -(0.4 * math.log(0.25) + 0.3 * math.log(0.25))  # top-2 of q_w[0]: classes 1, 3
    s1 = -(0.5 * math.log(0.4) + 0.25 * math.log(0.2))  # top-2 of q_w[1]: classes 0, 3
    want = (s0 + s1) / 3  # 1/N with N = 3, the full batch
    assert math.isclose(got, want, rel_tol=1e-5)


def test_consistency_loss_stops_gradient_through_weak_target():
    w = torch.randn(4, 5, requires_grad=True)
    s = torch.randn(4, 5, requires_grad=True)
    losses.consistency_loss(w, s, torch.ones(4, dtype=torch.bool), k=3).backward()
    assert w.grad is None or torch.count_nonzero(w.grad) == 0
    assert torch.count_nonzero(s.grad) > 0


def test_cross_entropy_and_negative_learning():
    logits = torch.log(P)
    want = -sum(math.log(P[i, Y[i]].item()) for i in range(5)) / 5
    assert math.isclose(losses.cross_entropy(logits, Y).item(), want, rel_tol=1e-5)
    ybar = torch.tensor([1, 2, 0, 1, 0])
    want = -sum(math.log(1 - P[i, ybar[i]].item()) for i in range(5)) / 5
    assert math.isclose(losses.negative_learning_loss(logits, ybar).item(), want, rel_tol=1e-5)


def test_complementary_labels_never_the_label_and_cover_the_rest():
    y = torch.zeros(3000, dtype=torch.long)
    ybar = losses.complementary_labels(y, 4, torch.Generator().manual_seed(0))
    assert not bool((ybar == y).any())
    counts = torch.bincount(ybar, minlength=4).tolist()
    assert counts[0] == 0 and all(900 < c < 1100 for c in counts[1:])
    again = losses.complementary_labels(y, 4, torch.Generator().manual_seed(0))
    assert torch.equal(ybar, again)


# ----------------------------------------------------------------------------- the DNFER threshold
def test_batch_threshold_is_the_column_mean_of_the_whole_batch():
    t = losses.batch_thresholds(P)
    # column means over all 5 samples: (0.7+0.5+0.1+0.3+0.2)/5, (0.2+0.3+0.6+0.1+0.2)/5, ...
    assert torch.allclose(t, torch.tensor([0.36, 0.28, 0.36]), atol=1e-7)
    # dyadic probabilities so that the means are exact: T = (0.75, 0.25)
    p = torch.tensor([[0.875, 0.125], [0.75, 0.25], [0.625, 0.375]])
    y = torch.tensor([0, 0, 1])
    tb = losses.batch_thresholds(p)
    assert tb.tolist() == [0.75, 0.25]
    assert losses.batch_confident_mask(p, y, tb).tolist() == [True, True, True]  # 0.75 >= 0.75
    # the paper's reading drops sample 1: T_0 = mean(0.875, 0.75) = 0.8125 over the samples labelled 0
    tl = losses.class_thresholds(p, y, 2)
    assert tl.tolist() == [0.8125, 0.375] and losses.confident_mask(p, y, tl).tolist() == [
        True,
        False,
        True,
    ]


def test_batch_threshold_can_leave_a_class_or_the_batch_without_confident_samples():
    p = torch.tensor([[0.875, 0.125], [0.25, 0.75], [0.25, 0.75]])
    y = torch.tensor([1, 0, 0])  # every label disagrees with the prediction
    t = losses.batch_thresholds(p)  # (0.4583, 0.5417)
    assert losses.batch_confident_mask(p, y, t).tolist() == [False, False, False]


# ----------------------------------------------------------------------------- GCE, SCE, ELR
PY = [0.7, 0.5, 0.6, 0.3, 0.6]  # P[i, Y[i]]


def test_generalized_cross_entropy_by_hand():
    logits = torch.log(P)
    want = sum((1 - p**0.7) / 0.7 for p in PY) / 5
    assert math.isclose(losses.generalized_cross_entropy(logits, Y, 0.7).item(), want, rel_tol=1e-6)
    # q = 1 is the MAE: mean(1 - p_y) = (0.3 + 0.5 + 0.4 + 0.7 + 0.4) / 5
    assert math.isclose(losses.generalized_cross_entropy(logits, Y, 1.0).item(), 0.46, rel_tol=1e-6)
    # q -> 0 tends to cross-entropy
    ce = losses.cross_entropy(logits, Y).item()
    assert math.isclose(losses.generalized_cross_entropy(logits, Y, 1e-4).item(), ce, rel_tol=1e-3)


def test_reverse_cross_entropy_by_hand():
    logits = torch.log(P)
    # -sum_c p_c log(onehot_c) with log 0 = A: only c != y count, each p_c * -A; sum_{c != y} p_c = 1 - p_y
    assert math.isclose(
        losses.reverse_cross_entropy(logits, Y, -4.0).item(), 4 * 0.46, rel_tol=1e-6
    )
    # the official code's clamp of the one-hot at 1e-4
    assert math.isclose(
        losses.reverse_cross_entropy(logits, Y, math.log(1e-4)).item(),
        -math.log(1e-4) * 0.46,
        rel_tol=1e-6,
    )
    # p is clamped at 1e-7 as in the official code: a certain, correct prediction costs 2 * 1e-7 * 4
    sure = torch.tensor([[100.0, 0.0, 0.0]])
    assert math.isclose(
        losses.reverse_cross_entropy(sure, torch.tensor([0]), -4.0).item(), 8e-7, rel_tol=1e-3
    )


def test_elr_target_update_and_regularizer_by_hand():
    p = losses.elr_probs(torch.log(P))
    assert torch.allclose(p, P, atol=1e-7)  # nothing to clamp here
    t1 = losses.elr_target_update(torch.zeros(5, 3), p, 0.7)
    assert torch.allclose(t1, 0.3 * P, atol=1e-7)  # from zero: (1 - beta) p / sum p
    t2 = losses.elr_target_update(t1, p, 0.7)
    assert torch.allclose(t2, 0.51 * P, atol=1e-7)  # 0.7 * 0.3 p + 0.3 p
    # log(1 - <t, p>) with t = 0.3 p: row 0 has sum p^2 = 0.49 + 0.04 + 0.01 = 0.54
    sq = (P * P).sum(dim=1).tolist()
    want = sum(math.log(1 - 0.3 * s) for s in sq) / 5
    assert math.isclose(losses.elr_regularizer(t1, p).item(), want, rel_tol=1e-6)
    assert math.isclose(sq[0], 0.54, rel_tol=1e-6)
    # clamp to [1e-4, 1 - 1e-4] and the normalised update
    sure = losses.elr_probs(torch.tensor([[100.0, 0.0]]))
    assert torch.allclose(sure, torch.tensor([[1 - 1e-4, 1e-4]]))
    logits = torch.randn(4, 3, requires_grad=True)
    q = losses.elr_probs(logits)
    t = losses.elr_target_update(torch.zeros(4, 3), q, 0.7)
    assert q.requires_grad and not t.requires_grad  # the target carries no gradient
    losses.elr_regularizer(t, q).backward()
    assert torch.count_nonzero(logits.grad) > 0  # the term's gradient flows through p
