"""bench/throughput.py compares like with like: the settings each variant
really trains with, read back from the objects handed to the trainers.

docs/benchmarks.md says every variant in SAME_LORA trains the same LoRA
(rank, alpha, dropout, target modules), batch, accumulation, schedule and data,
and that only the listed knobs (checkpointing, padding, length grouping)
differ between them.  These tests fail when a variant drifts from that.
"""
from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", REPO / "bench" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_throughput"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ARGS = Namespace(dataset="runs/play.json", model="SmolLM2-135M-Instruct", models_dir="models", epochs=1,
                 batch_size=4, cutoff_len=256, seed=42)
SHARED = ("r", "lora_alpha", "lora_dropout", "target_modules", "grad_accum", "batch_size", "epochs",
          "learning_rate", "warmup", "dataset", "cutoff_len", "seed", "every_sample_trains", "lora_layers")


@pytest.fixture(scope="module")
def settings(bench):
    pytest.importorskip("trl")  # requirements-bench.txt
    return {name: bench.effective_settings(name, ARGS) for name in bench.VARIANTS}


def test_same_lora_variants_share_everything_the_page_says_they_share(bench, settings):
    reference = settings["default"]
    for name in bench.SAME_LORA:
        for key in SHARED:
            assert settings[name][key] == reference[key], f"{name}: {key} {settings[name][key]!r} != {reference[key]!r}"
    assert reference["lora_dropout"] == 0.0 and reference["r"] == 16 and reference["grad_accum"] == 2


def test_only_the_named_exceptions_differ_in_lora_dropout(bench, settings):
    assert settings["naive_8bit"]["lora_dropout"] == 0.05  # the original recipe, as users ran it
    assert settings["trl_dropout05"]["lora_dropout"] == 0.05
    different = {n for n, s in settings.items() if s["lora_dropout"] != settings["default"]["lora_dropout"]}
    assert different == {"naive_8bit", "trl_dropout05"}
    assert set(bench.VARIANTS) - set(bench.SAME_LORA) == different | {"layers15", "layers10"}


def test_the_top_blocks_variants_differ_from_the_default_in_their_blocks_alone(settings):
    for name, blocks in (("layers15", 15), ("layers10", 10)):
        assert {k for k in settings[name] if settings[name][k] != settings["default"][k]} == {"lora_layers"}
        assert settings[name]["lora_layers"] == blocks


def test_checkpointing_is_on_exactly_where_the_page_says(settings):
    on = {n for n, s in settings.items() if s["gradient_checkpointing"]}
    # TRL's SFTConfig defaults to checkpointing on: only trl_defaults keeps that.
    assert on == {"naive_8bit", "checkpointing", "8bit", "trl_defaults"}


def test_trl_variants_get_the_sft_options_they_are_named_for(bench):
    pytest.importorskip("trl")
    args = {n: bench.peer_args(n, ARGS, "bf16", gpu=False, output_dir="unused") for n in bench.VARIANTS
            if bench.VARIANTS[n].runner == "trl"}
    grouped = {n for n, a in args.items() if a.train_sampling_strategy == "group_by_length"}
    assert grouped == {"trl", "trl_dropout05"}
    assert {n for n, a in args.items() if a.padding_free} == {"trl_padding_free"}
    assert {n for n, a in args.items() if a.packing} == {"trl_packed"}
    # Only padding-free without packing drops max_length (TRL refuses both);
    # the data is cut to cutoff_len before TRL sees it.
    assert {n: a.max_length for n, a in args.items()} == {n: None if n == "trl_padding_free" else 256 for n in args}


def test_default_variant_is_lora_finetune_defaults(bench):
    from charlora.train import TrainConfig

    cfg, defaults = bench.charlora_config("default", ARGS, "unused"), TrainConfig()
    for field in ("lora_rank", "lora_alpha", "lora_dropout", "target_modules", "grad_accum", "learning_rate",
                  "warmup", "gradient_checkpointing", "packing", "quantization", "neftune_noise_alpha", "dtype"):
        assert getattr(cfg, field) == getattr(defaults, field), field
