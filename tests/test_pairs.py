"""--pair_weight (charlora.pairs): the preference loss and how rivals ride in a batch, exact values."""
import math

import pytest
import torch

from charlora.pairs import collate_with_rivals, pair_loss, pair_term, row_text_means

EOS = 2


def test_row_means_are_per_text_token_and_leave_the_end_out():
    nll = torch.tensor([1.0, 2.0, 3.0, 0.5])
    target = torch.tensor([10, 11, EOS, 12])
    rows = torch.tensor([0, 0, 0, 1])
    means, counts = row_text_means(nll, target, rows, 3, EOS)
    assert means.tolist() == [-1.5, -0.5, 0.0]  # row 2 has no token: 0, not NaN
    assert counts.tolist() == [2.0, 1.0, 0.0]


def test_pair_loss_is_logistic_in_the_gain_gap():
    # real line: gain 0.5 nats/token over the base; rival: none -> gap 0.5, beta 5
    assert pair_loss(torch.tensor(-1.5), torch.tensor(-0.5), torch.tensor(-2.0), torch.tensor(-0.5), beta=5).item() == \
        pytest.approx(math.log1p(math.exp(-2.5)))
    # no gap: log 2, whatever the absolute likelihoods
    assert pair_loss(torch.tensor(-9.0), torch.tensor(-1.0), torch.tensor(-9.0), torch.tensor(-1.0)).item() == \
        pytest.approx(math.log(2))


def test_pair_term_counts_a_pair_once_per_text_token_of_the_real_line():
    nll = torch.tensor([1.0, 2.0, 3.0, 0.5], requires_grad=True)
    target = torch.tensor([10, 11, EOS, 12])
    rows = torch.tensor([0, 0, 0, 1])
    pairs = torch.tensor([[0, 1, -2.0, -0.5]])
    term = pair_term(nll, target, rows, 2, pairs, EOS, weight=0.5)
    assert term.item() == pytest.approx(0.5 * math.log1p(math.exp(-2.5)) * 2)
    term.backward()
    g = 0.5 * 5 / (1 + math.exp(2.5))  # weight * beta * sigmoid(-gap), per token of the real line
    assert nll.grad.tolist() == pytest.approx([g, g, 0.0, -2 * g])  # EOS untouched; the rival pushed down


def test_rivals_ride_as_extra_rows_of_weight_zero():
    feats = [{"input_ids": [1, 5], "attention_mask": [1, 1], "labels": [-100, 5], "loss_weight": 1.0,
              "rival_input_ids": [1, 6, 7], "rival_labels": [-100, 6, 7], "pair_ref": [-2.0, -3.0]},
             {"input_ids": [1, 8], "attention_mask": [1, 1], "labels": [-100, 8], "loss_weight": 0.3,
              "rival_input_ids": [], "rival_labels": [], "pair_ref": [0.0, 0.0]}]
    batch = collate_with_rivals(feats, collate=lambda rows: {"rows": rows})
    assert batch["rows"] == [
        {"input_ids": [1, 5], "attention_mask": [1, 1], "labels": [-100, 5], "loss_weight": 1.0},
        {"input_ids": [1, 8], "attention_mask": [1, 1], "labels": [-100, 8], "loss_weight": 0.3},
        {"input_ids": [1, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "loss_weight": 0.0},
    ]
    assert batch["pairs"].tolist() == [[0.0, 2.0, -2.0, -3.0]]
    assert collate_with_rivals(feats[1:], collate=lambda rows: {"rows": rows})["pairs"].shape == (0, 4)
