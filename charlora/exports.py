"""The processed samples in the dataset shapes other trainers read.

Each export is the same samples, one conversation each: the prompt that
charlora.prompt.build_prompt made (context lines, then `Name:`) as the user's
turn and the character's line as the assistant's, so a model trained on an
export sees byte-for-byte the text charlora trains on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from charlora.samples import write_text_atomic


def to_openai(samples: Sequence[dict[str, str]]) -> str:
    """OpenAI chat fine-tuning JSONL: {"messages": [user, assistant]} a line."""
    rows = ({"messages": [{"role": "user", "content": s["input"]}, {"role": "assistant", "content": s["output"]}]}
            for s in samples)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def to_sharegpt(samples: Sequence[dict[str, str]]) -> str:
    """ShareGPT JSON: [{"conversations": [{"from": "human"}, {"from": "gpt"}]}]."""
    rows = [{"conversations": [{"from": "human", "value": s["input"]}, {"from": "gpt", "value": s["output"]}]}
            for s in samples]
    return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"


# name -> (file suffix that replaces the dataset's .json, renderer)
EXPORTS = {"openai": (".openai.jsonl", to_openai), "sharegpt": (".sharegpt.json", to_sharegpt)}


def export_path(dataset: str | Path, kind: str) -> Path:
    """`processed_dataset.json` -> `processed_dataset.openai.jsonl` (beside it)."""
    dataset = Path(dataset)
    stem = dataset.name[: -len(dataset.suffix)] if dataset.suffix else dataset.name
    return dataset.with_name(stem + EXPORTS[kind][0])


def write_exports(samples: Sequence[dict[str, str]], dataset: str | Path, kinds: Sequence[str]) -> list[Path]:
    """Write each asked-for export beside the dataset file, atomically."""
    paths = []
    for kind in dict.fromkeys(kinds):
        path = export_path(dataset, kind)
        write_text_atomic(EXPORTS[kind][1](samples), path)
        paths.append(path)
    return paths
