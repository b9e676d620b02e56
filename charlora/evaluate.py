"""Does the adapter sound like the character?  Metrics on held-out dialogue.

- loss per reply token (reply + EOS, context masked): exactly the training
  objective, on lines the adapter never saw;
- the same loss on other speakers' lines, so an adapter that merely learned
  the text's style (helping everyone equally) is told apart from one that
  learned the character;
- greedy replies (charlora.reply, as chat makes them): the share that end by
  end-of-sequence within the budget, and the share that go on to write
  another speaker's `Name:` line.

`evaluate(cfg)` is evaluate.py: the loader and the reply generator are the
ones chat uses (adapter.load_with_adapters, reply.generate_replies).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from charlora.config import EvalConfig
from charlora.dialogue import Line
from charlora.pcw import PCW_RECENT
from charlora.reply import Sampling, generate_replies, speaks_for_other
from charlora.tokens import IGNORE_INDEX, encode_sample


def other_speaker_samples(lines: Sequence[Line], name: str, rounds: int) -> list[dict[str, str]]:
    """Samples for every line *not* by `name`, each prompted with its own speaker:
    source.other_samples, which training's --others_weight uses too."""
    from charlora.source import Source, other_samples

    return other_samples(Source(name, rounds, False, list(lines)), len(lines))


def reply_loss(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], cutoff_len: int, batch_size: int = 8) -> float:
    """Mean cross-entropy per reply token (EOS included), summed over all
    tokens before dividing so long replies weigh by their length."""
    from charlora.metrics import mean_loss

    return mean_loss(line_losses(model, tokenizer, samples, cutoff_len, batch_size))


def pcw_reply_loss(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], cutoff_len: int, windows: int,
                   recent: int = PCW_RECENT, window_len: int | None = None, batch_size: int = 8) -> float:
    """reply_loss with each sample's older context in `windows` Parallel
    Context Windows (pcw.pcw_sample: the last `recent` lines and `Name:` are
    the task, each window at most `window_len` tokens).  windows=1 with room
    for everything is reply_loss exactly."""
    from charlora.pcw import check_attention, collate_pcw, pcw_sample

    check_attention(model)
    dtype = model.get_input_embeddings().weight.dtype  # the 4D mask must be in the attention's dtype
    examples = [pcw_sample(tokenizer, s["input"], s["output"], cutoff_len, windows, recent, window_len) for s in samples]
    return _mean_label_loss(model, (collate_pcw(examples[i : i + batch_size], tokenizer.pad_token_id, "right", dtype)
                                    for i in range(0, len(examples), batch_size)))


def _mean_label_loss(model: Any, batches: Iterable[dict]) -> float:
    """Summed cross-entropy of every labelled token / their count, over batches for model(**batch)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
            total += nll.item()
            count += int((labels != IGNORE_INDEX).sum())
    return total / count if count else math.nan


def line_losses(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], cutoff_len: int,
                batch_size: int = 8, tick: Callable[[int], Any] = lambda n: None) -> list:
    """Each sample's reply NLL, text and end-of-sequence apart (metrics.LineLoss),
    on exactly reply_loss's tokens: mean_loss of the result is reply_loss."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from charlora.metrics import LineLoss

    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    examples = [encode_sample(tokenizer, s["input"], s["output"], cutoff_len) for s in samples]
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(examples[i : i + batch_size]).items()}
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits.float()[:, :-1]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                                    reduction="none")
            for row_nll, row_labels in zip(nll.tolist(), labels.tolist()):
                kept = [(n, t) for n, t in zip(row_nll, row_labels) if t != IGNORE_INDEX]
                ends = bool(kept) and kept[-1][1] == tokenizer.eos_token_id
                text = kept[:-1] if ends else kept
                out.append(LineLoss(sum(n for n, _ in text), len(text), kept[-1][0] if ends else None))
            tick(len(nll))
    return out


@dataclass
class Generation:
    prompt: str
    reference: str
    reply: str
    """What chat would say: the reply cut by charlora.reply's stop rules."""
    ended_by_eos: bool
    """The model wrote EOS within the budget, on its own (no stop rule helped)."""
    speaks_for_other: bool
    """The continuation goes on to a line by someone else (reply.other_speaker_at)."""
    text: str = ""
    """The whole continuation before EOS, stops not applied."""


def greedy_replies(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], name: str, speakers: Iterable[str],
                   max_new_tokens: int = Sampling.max_new_tokens, batch_size: int = 8,
                   sampling: Sampling | None = None) -> list[Generation]:
    """charlora.reply's replies (greedy unless `sampling` says otherwise), each
    generated on to EOS or the budget with no stop rule, to see what the
    model does on its own; `reply` is still what chat would say."""
    speakers = list(speakers)
    sampling = sampling or Sampling(max_new_tokens=max_new_tokens)
    model.eval()
    got = generate_replies(model, tokenizer, [s["input"] for s in samples], name, speakers, sampling, stop=False,
                           batch_size=batch_size)
    return [Generation(s["input"], s["output"], g.reply, g.eos, speaks_for_other(g.text, name, speakers), g.text)
            for s, g in zip(samples, got)]


@dataclass
class Report:
    label: str
    character_loss: float
    others_loss: float
    ended_by_eos: int
    spoke_for_other: int
    generated: int
    examples: list[Generation] = field(default_factory=list)
    # ended by EOS *and* never wrote another speaker's line: a usable reply
    clean_ends: int = 0
    repeated: int = 0
    """Replies in which a word 4-gram occurs twice."""
    copied: int | None = None
    """Replies sharing a word 8-gram with the adapter's training source (None: unknown)."""
    specificity: float | None = None
    """The character's relative loss gain over the base minus the other speakers' (adapters only)."""
    text_specificity: float | None = None
    """specificity on text tokens alone (end-of-sequence left out), to see how much of it is the learned EOS."""
    attribution_auc: float | None = None
    """AUC of telling the character's lines from the others' by per-line gain over the base (adapters only)."""
    seed: int | None = None
    split_losses: dict[str, float] = field(default_factory=dict)
    """Where the loss is: per text token and per end-of-sequence token, the
    character's and the others' (metrics.text_loss, metrics.eos_loss)."""

    @classmethod
    def of(cls, label: str, character_loss: float, others_loss: float, gens: list[Generation],
           training_ngrams: set | None = None, **extra) -> "Report":
        from charlora.metrics import copies, repeats_ngram

        copied = None if training_ngrams is None else sum(copies(g.reply, training_ngrams) for g in gens)
        return cls(label, character_loss, others_loss, sum(g.ended_by_eos for g in gens),
                   sum(g.speaks_for_other for g in gens), len(gens), gens,
                   sum(g.ended_by_eos and not g.speaks_for_other for g in gens),
                   sum(repeats_ngram(g.reply) for g in gens), copied, **extra)

    def row(self) -> str:
        """One line of the table; "-" where nothing was measured (no other
        speaker, no reply generated), as the summary says "not measured"."""
        n = self.generated
        extra = (f"{self.specificity:>+8.3f} {self.attribution_auc:>6.3f}" if self.specificity is not None
                 else f"{'':>8} {'':>6}")
        copied = f"{'-' if not n else '?':>6}" if self.copied is None or not n else f"{100 * self.copied / n:>5.0f}%"
        repeated = f"{100 * self.repeated / n:>5.0f}%" if n else f"{'-':>6}"
        others = f"{self.others_loss:>10.3f}" if not math.isnan(self.others_loss) else f"{'-':>10}"
        return (f"{self.label:<14} {self.character_loss:>9.3f} {others} "
                f"{self.clean_ends:>6}/{self.generated:<3} {self.ended_by_eos:>6}/{self.generated:<3}"
                f"{self.spoke_for_other:>6}/{self.generated:<3} {repeated} {copied} {extra}")


HEADER = (f"{'model':<14} {'char loss':>9} {'other loss':>10} {'clean ends':>10} {'EOS ends':>10} {'other spk':>9} "
          f"{'rep4':>6} {'copy8':>6} {'specif.':>8} {'AUC':>6}")


def adapter_names(cfg: EvalConfig) -> list[tuple[str, int | None]]:
    """(adapter, training seed): -l alone, or -l NAME --seeds N -> NAME-seed1 ... NAME-seedN."""
    if not cfg.seeds:
        return [(cfg.lora_name, None)] if cfg.lora_name else []
    return [(f"{cfg.lora_name}-seed{k}", k) for k in range(1, cfg.seeds + 1)]


def train_missing(cfg: EvalConfig, log: Callable[[str], None]) -> None:
    """--seeds with --train_dataset: train each seed's adapter that is not there yet, at the training defaults."""
    from charlora import models
    from charlora.checkpoints import is_adapter
    from charlora.errors import CharloraError
    from charlora.train import TrainConfig, train

    loras_dir, _ = models.resolve_dir(cfg.loras_dir, "loras")
    missing = [(name, seed) for name, seed in adapter_names(cfg) if not is_adapter(loras_dir / name)]
    # A folder that is there but holds no adapter is the user's (an interrupted
    # run's checkpoints, other files): training over it deleted them.
    for name, seed in missing:
        if (loras_dir / name).exists():
            raise CharloraError(f"{loras_dir / name} is there but holds no finished adapter; finish it with "
                                f"lora_finetune.py -l {name} --seed {seed} --resume, or move it away")
    for name, seed in missing:
        log(f"training {name} (seed {seed}) on {cfg.train_dataset} at the defaults")
        train(TrainConfig(dataset_name=cfg.train_dataset, model_name=cfg.model_name, lora_name=name, seed=seed,
                          sample_replies=0, models_dir=cfg.models_dir, loras_dir=cfg.loras_dir), log=log)


def input_files(cfg: EvalConfig) -> list[Path]:
    """The files evaluate.py reads that a --json path could name by mistake: the
    held-out text, the training dataset, each adapter's config and weights, the
    base's config and weights.  Folders that are not there add nothing (their
    own error comes later)."""
    from charlora import models

    files = [Path(cfg.txtfilename)] + ([Path(cfg.train_dataset)] if cfg.train_dataset else [])
    loras = models.resolve_dir(cfg.loras_dir, "loras")[0]
    for name, _ in adapter_names(cfg):
        files += [folder / f for folder in (loras / name, Path(name))
                  for f in ("adapter_config.json", "adapter_model.safetensors")]
    base = models.resolve_dir(cfg.models_dir, "models")[0] / cfg.model_name
    return files + [base / "config.json"] + (sorted(base.glob("*.safetensors")) if base.is_dir() else [])


def check_json_target(path: str | Path) -> None:
    """--json replaces only an earlier evaluate.py result (what write_json_atomic
    writes of one starts `{ "reports":`): naming the training dataset, its
    source text or an adapter's charlora_config.json replaced them, exit 0."""
    import re

    from charlora.errors import CharloraError

    path = Path(path)
    if not path.is_file():
        return
    with path.open("rb") as f:
        head = f.read(64)
    if not re.match(rb'\{\s*"reports"\s*:', head):
        raise CharloraError(f"{path} exists and is not an evaluate.py result; --json replaces only those "
                            "(choose another name)")


def training_lines(adapter_dir: Path) -> list[str] | None:
    """Every line the adapter was trained from (its source file, else its replies), for the copying score."""
    import json

    from charlora.samples import load_samples
    from charlora.source import load_source

    try:
        dataset = json.loads((adapter_dir / "charlora_config.json").read_text())["config"]["dataset_name"]
        samples = load_samples(dataset)
    except Exception:  # an adapter from another tool, or its dataset moved: copying stays unknown
        return None
    src, _ = load_source(Path(dataset), samples)
    return [line.text for line in src.lines] if src is not None else [s["output"] for s in samples]


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = print) -> list[Report]:
    """evaluate.py: a Report for the base model and one for each adapter (one, or one per seed)."""
    from charlora import metrics
    from charlora.adapter import attach_adapters, check_adapters_fit, find_adapter, load_with_adapters
    from charlora.dialogue import read_dialogue_file
    from charlora.errors import CharloraError
    from charlora import models
    from charlora.samples import build_samples, missing_speaker_message, speaker_counts
    from tqdm import tqdm

    lines, _ = read_dialogue_file(cfg.txtfilename)
    counts = speaker_counts(lines)
    samples = build_samples(lines, cfg.name, cfg.rounds)
    if not samples:
        raise CharloraError(missing_speaker_message(cfg.name, counts, cfg.txtfilename))
    others = other_speaker_samples(lines, cfg.name, cfg.rounds)[: cfg.others]
    # From the config alone, before --seeds trains anything: checked after the
    # model loaded, a bad -c cost every missing seed's training first.
    model_path = models.find_model(models.resolve_dir(cfg.models_dir, "models")[0], cfg.model_name)
    models.check_cutoff(cfg.cutoff_len, models.config_positions(
        models.read_config(model_path, cfg.trust_remote_code), models.load_tokenizer(model_path, cfg.trust_remote_code)))
    if cfg.train_dataset:
        train_missing(cfg, log)
    names = adapter_names(cfg)
    try:
        paths = [find_adapter(models.resolve_dir(cfg.loras_dir, "loras")[0], name) for name, _ in names]
    except CharloraError as exc:
        if not cfg.seeds or cfg.train_dataset:
            raise
        raise CharloraError(f"{exc}; with --seeds, -d DATASET trains the seeds that are missing") from None
    check_adapters_fit(paths, model_path, cfg.trust_remote_code)
    model, tokenizer, _ = load_with_adapters(cfg, [], None, log)

    def measure(m, label: str):
        # a bar per model: the base and three seeds took 15 silent minutes on one CPU thread
        prompts = samples[: cfg.generate]
        with tqdm(total=len(samples) + len(others) + len(prompts), desc=f"scoring {label}", unit="line") as bar:
            char = line_losses(m, tokenizer, samples, cfg.cutoff_len, tick=bar.update)
            other = line_losses(m, tokenizer, others, cfg.cutoff_len, tick=bar.update) if others else []
            gens = []
            for i in range(0, len(prompts), cfg.batch_size):  # a batch at a time, so the bar moves
                gens += greedy_replies(m, tokenizer, prompts[i : i + cfg.batch_size], cfg.name, counts,
                                       batch_size=cfg.batch_size, sampling=cfg.sampling)
                bar.update(len(prompts[i : i + cfg.batch_size]))
        return char, other, gens

    base_char, base_other, base_gens = measure(model, "base")
    b_char, b_other = metrics.mean_loss(base_char), metrics.mean_loss(base_other)
    base_split = loss_split(base_char, base_other)
    reports = [Report.of("base", b_char, b_other, base_gens, split_losses=base_split)]
    for (name, seed), path in zip(names, paths):
        tuned = attach_adapters(model, [path], [1.0])
        char, other, gens = measure(tuned, name)
        model = tuned.unload()  # the LoRA layers out again: the next adapter starts from the plain base
        t_char, t_other = metrics.mean_loss(char), metrics.mean_loss(other)
        train_text = training_lines(path)
        split = loss_split(char, other)
        reports.append(Report.of(
            name if len(names) > 1 else "adapter", t_char, t_other, gens,
            metrics.ngram_index(train_text) if train_text is not None else None,
            specificity=metrics.specificity(b_char, t_char, b_other, t_other) if others else None,
            text_specificity=metrics.specificity(base_split["character_text"], split["character_text"],
                                                 base_split["others_text"], split["others_text"]) if others else None,
            attribution_auc=metrics.auc(metrics.gains(base_char, char), metrics.gains(base_other, other))
            if others else None,
            seed=seed, split_losses=split))
    return reports


def loss_split(char: Sequence, other: Sequence) -> dict[str, float]:
    from charlora import metrics

    return {"character_text": metrics.text_loss(char), "character_eos": metrics.eos_loss(char),
            "others_text": metrics.text_loss(other), "others_eos": metrics.eos_loss(other)}


def seed_scores(base: dict, tuned: Sequence[dict]) -> dict[str, list[float]]:
    """Each score, one value per adapter (seed), from reports as field dicts
    (a Report's vars() or its evaluate.py JSON); a score not measured (None,
    e.g. --others 0 or --generate 0) is NaN, which mean_sd leaves out."""
    def value(r, k):
        v = r.get(k)
        return math.nan if v is None or (isinstance(v, float) and math.isnan(v)) else v

    def share(r, k):
        return value(r, k) / r["generated"] if r["generated"] else math.nan

    def change(r, k):
        return value(r, k) / value(base, k) - 1 if value(base, k) else math.nan

    return {
        "character_loss": [value(r, "character_loss") for r in tuned],
        "others_loss": [value(r, "others_loss") for r in tuned],
        "character_loss_change": [change(r, "character_loss") for r in tuned],
        "others_loss_change": [change(r, "others_loss") for r in tuned],
        "specificity": [value(r, "specificity") for r in tuned],
        "text_specificity": [value(r, "text_specificity") for r in tuned],
        "attribution_auc": [value(r, "attribution_auc") for r in tuned],
        "clean_ends": [share(r, "clean_ends") for r in tuned],
        "repeated_4gram": [share(r, "repeated") for r in tuned],
        "copied_8gram": [share(r, "copied") for r in tuned],
    }


# What the summary reports (the raw losses are in each report)
SUMMARY_SCORES = ("character_loss_change", "others_loss_change", "specificity", "text_specificity", "attribution_auc",
                  "clean_ends", "repeated_4gram", "copied_8gram")


def summary(reports: Sequence[Report]) -> dict[str, tuple[float, float]]:
    """(mean, standard deviation) over the adapters (seeds) of each score."""
    from charlora.metrics import mean_sd

    scores = seed_scores(vars(reports[0]), [vars(r) for r in reports[1:]])
    return {k: mean_sd(scores[k]) for k in SUMMARY_SCORES}


def summary_lines(summ: dict, n: int) -> str:
    """The summary's scores in words, with ± standard deviation over seeds."""
    def fmt(key, scale=100.0, unit="%", sign="+", digits=1):
        mean, sd = summ[key]
        if math.isnan(mean):  # --others 0, --generate 0, no other speaker, training text unknown: was "+nan%"
            return "not measured"
        return f"{scale * mean:{sign}.{digits}f}{unit}" + (f" ± {scale * sd:.{digits}f}" if n > 1 else "")

    return (f"character loss change: {fmt('character_loss_change')}; other speakers: {fmt('others_loss_change')}; "
            f"specificity {fmt('specificity', unit=' pt')} (text tokens alone {fmt('text_specificity', unit=' pt')}); "
            f"attribution AUC {fmt('attribution_auc', 1.0, '', '', 3)}"
            f"{f' (mean ± sd over {n} seeds)' if n > 1 else ''}\n"
            f"clean endings {fmt('clean_ends', sign='')}; replies repeating a 4-gram {fmt('repeated_4gram', sign='')}; "
            f"sharing an 8-gram with training {fmt('copied_8gram', sign='')}")


def print_reports(reports: Sequence[Report], examples: int) -> None:
    """The table, the adapters' scores, and `examples` replies side by side."""
    print(HEADER)
    for r in reports:
        print(r.row())
    if len(reports) > 1:
        print(summary_lines(summary(reports), len(reports) - 1))
    for i in range(min(examples, len(reports[0].examples))):
        print(f"\n...{reports[0].examples[i].prompt[-150:]!r}\n  reference: {reports[0].examples[i].reference[:150]}")
        for r in reports:
            print(f"  {r.label:<9}: {r.examples[i].reply[:150]!r}{'' if r.examples[i].ended_by_eos else ' [no EOS]'}")
