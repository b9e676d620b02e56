"""Does the adapter learn the person rather than the play?  Pure scores over
per-line numbers and generated text, used by evaluate.py.

- specificity: the character's held-out loss gain minus the other speakers'
  gain (relative gains, base -> adapter).  Positive means the adapter helps
  the person more than it helps everyone in the text.
- attribution: the AUC of telling the character's held-out lines from the
  other speakers' lines by the adapter's per-line log-likelihood gain over
  the base (each line prompted with its own speaker, as in training).  The
  gain is averaged over the line's text tokens, end-of-sequence left out: the
  learned EOS is the same gain on every line, which per token would favour
  short lines and measure where lines end, not who speaks them.
- repetition: the share of replies in which a word 4-gram occurs twice.
- verbatim copying: the share of replies sharing a word 8-gram with the
  training lines.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

_WORD = re.compile(r"\w+(?:'\w+)*")


def words(text: str) -> list[str]:
    """Lower-cased words: punctuation and case don't make two n-grams differ."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeats_ngram(text: str, n: int = 4) -> bool:
    """True if some word n-gram occurs twice in the text ("I am a man, I am a man")."""
    grams = ngrams(words(text), n)
    return len(set(grams)) < len(grams)


def ngram_index(texts: Iterable[str], n: int = 8) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for t in texts:
        out.update(ngrams(words(t), n))
    return out


def copies(text: str, index: set[tuple[str, ...]], n: int = 8) -> bool:
    """True if the text shares a word n-gram with the indexed training lines."""
    return any(g in index for g in ngrams(words(text), n))


@dataclass(frozen=True)
class LineLoss:
    """One held-out line's summed negative log-likelihood (nats)."""

    text_nll: float
    text_tokens: int
    eos_nll: float | None
    """The end-of-sequence token after the line (None if the line was cut before it)."""

    @property
    def tokens(self) -> int:
        return self.text_tokens + (self.eos_nll is not None)


def mean_loss(lines: Sequence[LineLoss]) -> float:
    """Loss per reply token, EOS included: reply_loss's figure."""
    count = sum(x.tokens for x in lines)
    return sum(x.text_nll + (x.eos_nll or 0.0) for x in lines) / count if count else math.nan


def text_loss(lines: Sequence[LineLoss]) -> float:
    """Loss per text token, end-of-sequence left out: what was said, not where it ended."""
    count = sum(x.text_tokens for x in lines)
    return sum(x.text_nll for x in lines) / count if count else math.nan


def eos_loss(lines: Sequence[LineLoss]) -> float:
    """Mean NLL of the end-of-sequence token, per line that has one: where a line ends, apart from what it says."""
    ends = [x.eos_nll for x in lines if x.eos_nll is not None]
    return sum(ends) / len(ends) if ends else math.nan


def gains(base: Sequence[LineLoss], tuned: Sequence[LineLoss]) -> list[float]:
    """Per-line log-likelihood gain per text token (base NLL - adapter NLL);
    lines with no text token are left out."""
    return [(b.text_nll - t.text_nll) / b.text_tokens for b, t in zip(base, tuned) if b.text_tokens]


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a random positive scores above a random negative), ties half: the
    Mann-Whitney form of the ROC AUC.  NaN when a side is empty."""
    if not positive or not negative:
        return math.nan
    ranked = sorted([(v, 1) for v in positive] + [(v, 0) for v in negative])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # ranks are 1-based; a tie shares the mean rank
        rank_sum += mid * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positive), len(negative)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def relative_gain(base: float, tuned: float) -> float:
    """How much lower the adapter's loss is, as a share of the base's (0.1 = 10% lower)."""
    return (base - tuned) / base


def specificity(char_base: float, char_tuned: float, others_base: float, others_tuned: float) -> float:
    """The character's relative loss gain minus the other speakers'."""
    return relative_gain(char_base, char_tuned) - relative_gain(others_base, others_tuned)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0.0 for a single value)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def compare_seeds(a: Sequence[float], b: Sequence[float]) -> dict:
    """b against a, each one value per training seed: means, sample sds, the
    difference of the means, its standard error sqrt(sd_a^2/n_a + sd_b^2/n_b)
    (unpaired: seed k of one method is no closer to seed k of the other than
    to any other seed), and the verdict at 2 standard errors, the project's
    rule for "no difference"."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    diff = mb - ma
    if math.isnan(diff):
        verdict = "not scored"
    else:
        verdict = "no difference" if abs(diff) < 2 * se or diff == 0 else ("higher" if diff > 0 else "lower")
    return {"a_mean": ma, "a_sd": sa, "b_mean": mb, "b_sd": sb, "difference": diff, "standard_error": se,
            "difference_in_se": diff / se if se else (0.0 if diff == 0 else math.inf), "verdict": verdict}
