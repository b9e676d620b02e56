"""The reply-only n-gram ban: exact bans, and it never looks at the prompt."""
import torch

from charlora.reply import banned_next, make_reply_ngram_block


def test_banned_next_exact():
    assert banned_next([5, 6, 7, 5, 6], 3) == {7}        # "5 6" was followed by 7
    assert banned_next([5, 6, 7, 5, 6], 4) == set()      # "7 5 6" never seen before
    assert banned_next([1, 1, 1], 2) == {1}
    assert banned_next([1, 2], 3) == set()               # too short
    assert banned_next([4, 9, 4, 8, 4], 2) == {9, 8}
    assert banned_next([3, 3], 0) == set()


def test_block_looks_at_the_reply_only():
    block = make_reply_ngram_block(2, prompt_len=3)
    ids = torch.tensor([[7, 8, 7, 8, 1]])  # prompt 7 8 7; reply 8 1: no bigram repeated inside the reply yet
    scores = torch.zeros(1, 10)
    assert torch.equal(block(ids, scores.clone()), scores)  # "7 8" in the prompt is not the reply's
    ids = torch.tensor([[7, 8, 7, 8, 1, 8]])  # reply 8 1 8: "8 1" said, so after 8 the token 1 is banned
    out = block(ids, torch.zeros(1, 10))
    assert out[0, 1] == -float("inf") and torch.isfinite(out[0, [0, *range(2, 10)]]).all()


def test_block_learns_the_prompt_length_from_its_first_call():
    block = make_reply_ngram_block(2)
    block(torch.tensor([[7, 8, 7]]), torch.zeros(1, 10))  # the prompt alone: start = 3
    out = block(torch.tensor([[7, 8, 7, 8, 1, 8]]), torch.zeros(1, 10))
    assert out[0, 1] == -float("inf") and out[0, 7] == 0  # "8 7" is the prompt's, not the reply's
