"""The processed samples in the dataset shapes other trainers read.

Each export is the same samples, one conversation each: the prompt that
charlora.prompt.build_prompt made (context lines, then `Name:`) as the user's
turn and the character's line as the assistant's, so a model trained on an
export sees byte-for-byte the text charlora trains on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from charlora.files import strict_json


def to_openai(samples: Sequence[dict[str, str]]) -> str:
    """OpenAI chat fine-tuning JSONL: {"messages": [user, assistant]} a line."""
    rows = ({"messages": [{"role": "user", "content": s["input"]}, {"role": "assistant", "content": s["output"]}]}
            for s in samples)
    return "".join(strict_json(row, indent=None) + "\n" for row in rows)


def to_sharegpt(samples: Sequence[dict[str, str]]) -> str:
    """ShareGPT JSON: [{"conversations": [{"from": "human"}, {"from": "gpt"}]}]."""
    rows = [{"conversations": [{"from": "human", "value": s["input"]}, {"from": "gpt", "value": s["output"]}]}
            for s in samples]
    return strict_json(rows) + "\n"


# name -> (file suffix that replaces the dataset's .json, renderer)
EXPORTS = {"openai": (".openai.jsonl", to_openai), "sharegpt": (".sharegpt.json", to_sharegpt)}


def export_path(dataset: str | Path, kind: str) -> Path:
    """`processed_dataset.json` -> `processed_dataset.openai.jsonl` (beside it)."""
    dataset = Path(dataset)
    stem = dataset.name[: -len(dataset.suffix)] if dataset.suffix else dataset.name
    return dataset.with_name(stem + EXPORTS[kind][0])


def export_paths(dataset: str | Path, kinds: Sequence[str]) -> dict[str, Path]:
    """{kind: path} for each asked-for export, once each."""
    return {kind: export_path(dataset, kind) for kind in dict.fromkeys(kinds)}


def export_files(samples: Sequence[dict[str, str]], dataset: str | Path,
                 kinds: Sequence[str]) -> list[tuple[str, Path]]:
    """(text, path) of each asked-for export beside the dataset file, for
    files.write_texts_atomic (the caller checks every destination first:
    charlora.files.check_outputs)."""
    return [(EXPORTS[kind][1](samples), path) for kind, path in export_paths(dataset, kinds).items()]
