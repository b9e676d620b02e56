"""Parallel Context Windows: the layout's exact values, then the issue's
correctness list on a tiny model of every family.

The reference for N windows is what PCW means, computed the long way: the
prefix's cache, each window run alone on a copy of it (positions restarting
after the prefix), their keys/values concatenated, then the task run on that
cache with ordinary causal attention.  The single masked pass must agree.
"""
import pytest
import torch

from charlora.pcw import (PAD, TASK, PCWError, attention_allowed, check_attention, collate_pcw, pcw_example,
                          pcw_forward, pcw_generate, pcw_layout, pcw_step, sampling_rule)
from charlora.tokens import IGNORE_INDEX
from conftest import FAMILIES, FAMILY_TOKENIZER, tiny_config

PREFIX = [11, 12, 13]
WINDOWS = [[21, 22, 23, 24, 25], [31, 32, 33], [41, 42, 43, 44]]
TASK_IDS = [51, 52, 53, 54]
ATOL = 1e-5


def _build(family, tokenizers, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config(family, tokenizers[FAMILY_TOKENIZER[family]])
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def models(tiny_tokenizers):
    return {family: _build(family, tiny_tokenizers) for family in FAMILIES}


def _ids(xs):
    return torch.tensor([list(xs)])


def _kv(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def reference(model, prefix, windows, task):
    """(logits over prefix, windows, task in layout order, cache, next position) from per-window caches."""
    from transformers import DynamicCache

    p = len(prefix)
    with torch.no_grad():
        pre = model(input_ids=_ids(prefix), use_cache=True)
        pre_kv = _kv(pre.cache)
        logits, parts = [pre.logits], [pre_kv]
        for window in windows:
            out = model(input_ids=_ids(window), position_ids=_ids(range(p, p + len(window))),
                        cache=DynamicCache(ddp_cache_data=pre_kv), use_cache=True)
            logits.append(out.logits)
            parts.append([(k[:, :, p:], v[:, :, p:]) for k, v in _kv(out.cache)])
        joined = DynamicCache(ddp_cache_data=[(torch.cat([part[i][0] for part in parts], dim=2),
                                               torch.cat([part[i][1] for part in parts], dim=2))
                                              for i in range(len(pre_kv))])
        start = p + max((len(w) for w in windows), default=0)
        out = model(input_ids=_ids(task), position_ids=_ids(range(start, start + len(task))), cache=joined,
                    use_cache=True)
    return torch.cat([*logits, out.logits], dim=1)[0], out.cache, start + len(task)


# ------------------------------------------------------------------ exact layout


def test_layout_exact_values():
    layout = pcw_layout([1, 2], [[3, 4, 5], [6, 7]], [8, 9])
    assert layout["input_ids"] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert layout["position_ids"] == [0, 1, 2, 3, 4, 2, 3, 5, 6]
    assert layout["segments"] == [0, 0, 1, 1, 1, 2, 2, TASK, TASK]
    assert attention_allowed(layout["segments"]).int().tolist() == [
        # p  p  w1 w1 w1 w2 w2 t  t
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # prefix: causal on itself
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # window 1: prefix + causal in window 1
        [1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0, 0],  # window 2: prefix + causal in window 2, never window 1
        [1, 1, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 0],  # task: everything before it, causal on itself
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
    ]


def test_layout_edges():
    # no windows: an ordinary causal sequence; no prefix: windows start at 0
    plain = pcw_layout([1, 2], [], [3])
    assert plain["position_ids"] == [0, 1, 2]
    assert attention_allowed(plain["segments"]).equal(torch.ones(3, 3, dtype=torch.bool).tril())
    assert pcw_layout([], [[1, 2], [3]], [4])["position_ids"] == [0, 1, 0, 2]
    with pytest.raises(PCWError, match="task part is empty"):
        pcw_layout([1], [[2]], [])


def test_padded_mask_exact_values():
    feats = [pcw_layout([1], [[2, 3], [4]], [5]), pcw_layout([1], [[2]], [3])]
    left = collate_pcw(feats, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[1, 2, 3, 4, 5], [0, 0, 1, 2, 3]]
    assert left["position_ids"].tolist() == [[0, 1, 2, 1, 3], [0, 0, 0, 1, 2]]
    assert left["attention_mask"].shape == (2, 1, 5, 5)
    assert (left["attention_mask"][1, 0] == 0).int().tolist() == [
        [1, 0, 0, 0, 0],  # padding sees only itself: no empty (NaN) row
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],  # and no real token sees padding
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    right = collate_pcw(feats, pad_token_id=0, padding_side="right")
    assert right["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0]]
    assert (right["attention_mask"][1, 0] == 0).int().tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    assert right["attention_mask"].dtype == torch.float32
    assert right["attention_mask"].min() == torch.finfo(torch.float32).min


def test_training_example_and_collate_exact_values():
    ex = pcw_example([1], [[2, 3], [4]], [5, 6, 7], [IGNORE_INDEX, 6, 7])
    assert ex == {"input_ids": [1, 2, 3, 4, 5, 6, 7], "position_ids": [0, 1, 2, 1, 3, 4, 5],
                  "segments": [0, 1, 1, 2, TASK, TASK, TASK],
                  "labels": [IGNORE_INDEX] * 5 + [6, 7]}
    short = pcw_example([1], [[2]], [3, 4], [IGNORE_INDEX, 4])
    batch = collate_pcw([ex, short], pad_token_id=0, dtype=torch.bfloat16)
    assert set(batch) == {"input_ids", "position_ids", "attention_mask", "labels"}
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, -100, 6, 7], [-100, -100, -100, 4] + [-100] * 3]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 1, 3, 4, 5], [0, 1, 2, 3, 0, 0, 0]]
    assert batch["attention_mask"].dtype == torch.bfloat16
    with pytest.raises(PCWError, match="first task token"):
        pcw_example([1], [[2]], [3, 4], [3, 4])
    with pytest.raises(PCWError, match="differ in length"):
        pcw_example([1], [[2]], [3, 4], [IGNORE_INDEX])
    # without windows the token before the task is the prefix's last: an ordinary label
    assert pcw_example([1], [], [3, 4], [3, 4])["labels"] == [IGNORE_INDEX, 3, 4]


def test_refuses_attention_without_dense_masks():
    from types import SimpleNamespace

    with pytest.raises(PCWError, match="flash_attention_2"):
        check_attention(SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2")))


# ------------------------------------------------------------------ every family


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_one_window_equals_ordinary_logits(family, attn, tiny_tokenizers):
    model = _build(family, tiny_tokenizers, attn)
    with torch.no_grad():
        out, _ = pcw_forward(model, pcw_layout(PREFIX, WINDOWS[:1], TASK_IDS))
        plain = model(input_ids=_ids(PREFIX + WINDOWS[0] + TASK_IDS)).logits
    torch.testing.assert_close(out.logits, plain, rtol=0, atol=ATOL)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_single_pass_equals_per_window_caches(family, attn, tiny_tokenizers):
    model = _build(family, tiny_tokenizers, attn)
    with torch.no_grad():
        out, state = pcw_forward(model, pcw_layout(PREFIX, WINDOWS, TASK_IDS))
    ref_logits, ref_cache, ref_next = reference(model, PREFIX, WINDOWS, TASK_IDS)
    torch.testing.assert_close(out.logits[0], ref_logits, rtol=0, atol=ATOL)
    assert state.next_positions.tolist() == [ref_next] == [len(PREFIX) + 5 + len(TASK_IDS)]
    for (k, v), (rk, rv) in zip(_kv(state.cache), _kv(ref_cache)):
        torch.testing.assert_close(k, rk, rtol=0, atol=ATOL)
        torch.testing.assert_close(v, rv, rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_window_cannot_see_another_window(family, models):
    model = models[family]
    changed = [WINDOWS[0], [x + 100 for x in WINDOWS[1]], WINDOWS[2]]
    with torch.no_grad():
        a, _ = pcw_forward(model, pcw_layout(PREFIX, WINDOWS, TASK_IDS), output_hidden_states=True)
        b, _ = pcw_forward(model, pcw_layout(PREFIX, changed, TASK_IDS), output_hidden_states=True)
    p, w1, w2 = len(PREFIX), len(WINDOWS[0]), len(WINDOWS[1])
    unseen = list(range(0, p + w1)) + list(range(p + w1 + w2, p + w1 + w2 + len(WINDOWS[2])))
    task = slice(-len(TASK_IDS), None)
    for ha, hb in zip(a.hidden_states, b.hidden_states):  # embeddings and every layer
        assert torch.equal(ha[0, unseen], hb[0, unseen])  # prefix, windows 1 and 3: not a bit moved
    assert (a.hidden_states[-1][0, task] - b.hidden_states[-1][0, task]).abs().min() > 1e-4  # the task reads it


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_wrapped_model(family, tiny_tokenizers):
    """chat and training run PEFT models: the mask, positions and cache pass through the wrapper."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_build(family, tiny_tokenizers), LoraConfig(r=4, target_modules="all-linear",
                                                                         init_lora_weights=False)).eval()
    with torch.no_grad():
        out, _ = pcw_forward(model, pcw_layout(PREFIX, WINDOWS[:1], TASK_IDS))
        plain = model(input_ids=_ids(PREFIX + WINDOWS[0] + TASK_IDS)).logits
        ref = model.generate(_ids(PREFIX + WINDOWS[0] + TASK_IDS), max_new_tokens=4, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, -4:].tolist()
    torch.testing.assert_close(out.logits, plain, rtol=0, atol=ATOL)
    assert pcw_generate(model, PREFIX, WINDOWS[:1], TASK_IDS, max_new_tokens=4).ids == ref


def _recorded(steps):
    def next_token(ids, logits):
        steps.append(logits.clone())
        return int(logits.argmax())
    return next_token


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_steps_equal_reference(family, models):
    model, n = models[family], 6
    steps = []
    reply = pcw_generate(model, PREFIX, WINDOWS, TASK_IDS, max_new_tokens=n, next_token=_recorded(steps))
    assert reply.ended_by == "length" and len(reply.ids) == n == len(steps)

    ref_logits, cache, position = reference(model, PREFIX, WINDOWS, TASK_IDS)
    logits, ref_ids = ref_logits[-1], []
    with torch.no_grad():
        for step in range(n):
            torch.testing.assert_close(steps[step], logits, rtol=0, atol=ATOL, msg=f"step {step}")
            ref_ids.append(int(logits.argmax()))
            out = model(input_ids=_ids(ref_ids[-1:]), position_ids=_ids([position + step]), cache=cache,
                        use_cache=True)
            cache, logits = out.cache, out.logits[0, -1]
    assert reply.ids == ref_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_one_window_decode_equals_generate(family, models):
    model = models[family]
    ids = PREFIX + WINDOWS[0] + TASK_IDS
    with torch.no_grad():
        ref = model.generate(_ids(ids), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=5,
                             do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert pcw_generate(model, PREFIX, WINDOWS[:1], TASK_IDS, max_new_tokens=5).ids == ref


@pytest.mark.parametrize("do_sample", [False, True])
def test_sampling_rule_matches_generate(do_sample, models):
    """chat's sampler (repetition penalty, temperature, top-p) plugs in as transformers' processors."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopPLogitsWarper)

    model, ids = models["llama"], PREFIX + WINDOWS[0] + TASK_IDS
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.5)])
    if do_sample:
        processors += [TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9)]
    torch.manual_seed(7)
    with torch.no_grad():
        ref = model.generate(_ids(ids), max_new_tokens=8, do_sample=do_sample, repetition_penalty=1.5,
                             temperature=0.7 if do_sample else None, top_p=0.9 if do_sample else None, top_k=0,
                             eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    torch.manual_seed(7)
    rule = sampling_rule(processors, do_sample=do_sample)
    assert pcw_generate(model, PREFIX, WINDOWS[:1], TASK_IDS, max_new_tokens=8, next_token=rule).ids == ref


def test_generate_stops_at_eos_and_stop_rule(models):
    model = models["gpt2"]
    first = pcw_generate(model, PREFIX, WINDOWS, TASK_IDS, max_new_tokens=4).ids
    ended = pcw_generate(model, PREFIX, WINDOWS, TASK_IDS, max_new_tokens=4, eos_token_id=first[1])
    assert (ended.ids, ended.ended_by) == (first[:1], "eos")
    stopped = pcw_generate(model, PREFIX, WINDOWS, TASK_IDS, max_new_tokens=4, stop=lambda new: len(new) == 3)
    assert (stopped.ids, stopped.ended_by) == (first[:3], "stop")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_unbatched(family, side, models):
    model = models[family]
    layouts = [pcw_layout(PREFIX, WINDOWS, TASK_IDS), pcw_layout(PREFIX[:1], [[7, 8], [9]], [10, 11])]
    with torch.no_grad():
        singles = []
        for layout in layouts:
            one, state = pcw_forward(model, layout)
            token = int(one.logits[0, -1].argmax())
            singles.append((one.logits[0], token, pcw_step(model, state, [token])[0]))
        batch, state = pcw_forward(model, layouts, padding_side=side)
        step = pcw_step(model, state, [token for _, token, _ in singles])
    assert not batch.logits.isnan().any() and not step.isnan().any()
    width = batch.logits.shape[1]
    for row, (logits, _, step_logits) in enumerate(singles):
        n = logits.shape[0]
        real = slice(width - n, width) if side == "left" else slice(0, n)
        torch.testing.assert_close(batch.logits[row, real], logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(step[row], step_logits, rtol=0, atol=ATOL)  # the decoding step too
    assert state.visible.sum(dim=1).tolist() == [len(layout["input_ids"]) + 1 for layout in layouts]


def _task_example(tokenizer):
    """Recent turns + reply as tokens.encode_sample builds them, windows from other lines."""
    from charlora.tokens import encode_sample

    enc = encode_sample(tokenizer, "Alice:Good morning, Bob.\nBob:", "I have two apples.", 64)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    task_ids, task_labels = enc["input_ids"], enc["labels"]
    if task_ids[0] == tokenizer.bos_token_id and tokenizer("")["input_ids"]:  # BOS belongs to the prefix
        task_ids, task_labels = task_ids[1:], task_labels[1:]
    prefix = tokenizer("")["input_ids"] + ids("Bob is a grocer.\n")
    windows = [ids("Bob:One apple.\n"), ids("Alice:How many today?\nBob:Three.\n"), ids("Alice:Hello.\n")]
    return prefix, windows, task_ids, task_labels


@pytest.mark.parametrize("family", FAMILIES)
def test_training_loss_equals_references(family, models, tiny_tokenizers):
    model = models[family]
    prefix, windows, task_ids, task_labels = _task_example(tiny_tokenizers[FAMILY_TOKENIZER[family]])
    with torch.no_grad():
        # one window: exactly an ordinary sample
        one = collate_pcw([pcw_example(prefix, windows[:1], task_ids, task_labels)], pad_token_id=0)
        plain_ids = prefix + windows[0] + task_ids
        plain_labels = [IGNORE_INDEX] * (len(prefix) + len(windows[0])) + task_labels
        plain = model(input_ids=_ids(plain_ids), labels=_ids(plain_labels)).loss
        torch.testing.assert_close(model(**one).loss, plain, rtol=0, atol=ATOL)

        # three windows: the per-window-cache reference's loss on the reply
        pcw = model(**collate_pcw([pcw_example(prefix, windows, task_ids, task_labels)], pad_token_id=0)).loss
        task_logits = reference(model, prefix, windows, task_ids)[0][-len(task_ids):]
        expected = torch.nn.functional.cross_entropy(task_logits[:-1], torch.tensor(task_labels[1:]),
                                                     ignore_index=IGNORE_INDEX)
        torch.testing.assert_close(pcw, expected, rtol=0, atol=ATOL)

        # a padded batch of both: the token-weighted mean of the two
        examples = [pcw_example(prefix, windows, task_ids, task_labels),
                    pcw_example(prefix, windows[:1], task_ids, task_labels)]
        batch = collate_pcw(examples, pad_token_id=0)
        assert batch["input_ids"].shape[1] > len(examples[1]["input_ids"])  # the second row is padded
        out = model(**batch)
        assert not out.logits.isnan().any()
        torch.testing.assert_close(out.loss, (pcw + plain) / 2, rtol=0, atol=ATOL)  # same reply tokens in both


def test_pcw_pairing_over_seeds_exact_values():
    """bench/pcw_pairs.py: treated against control over seeds, and each method against its own truncation."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("pcw_pairs", Path(__file__).resolve().parents[1] / "bench" / "pcw_pairs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    scores = {"c1": {"truncated": 4.0, "pcw 3": 3.9}, "c2": {"truncated": 4.2, "pcw 3": 4.2},
              "t1": {"truncated": 4.1, "pcw 3": 3.6}, "t2": {"truncated": 4.3, "pcw 3": 3.8}}
    out = bench.pair(scores, ["c1", "c2"], ["t1", "t2"])
    # truncated: control 4.1 +- 0.1414, treated 4.2 +- 0.1414; se sqrt(0.02/2 + 0.02/2) = 0.1414: 0.71 SE
    t = out["treated_vs_control"]["truncated"]
    assert t["difference"] == pytest.approx(0.1) and t["standard_error"] == pytest.approx(0.141421, abs=1e-6)
    assert t["verdict"] == "no difference"
    # pcw 3 against truncation: control -0.1 and 0.0 (no difference), treated -0.5 and -0.5 (sd 0: lower)
    assert out["vs_truncated"]["control"]["pcw 3"]["difference"] == pytest.approx(-0.05)
    assert out["vs_truncated"]["control"]["pcw 3"]["verdict"] == "no difference"
    assert out["vs_truncated"]["treated"]["pcw 3"]["difference"] == pytest.approx(-0.5)
    assert out["vs_truncated"]["treated"]["pcw 3"]["verdict"] == "lower"
    assert "truncated" not in out["vs_truncated"]["treated"]
    with pytest.raises(SystemExit, match="t3"):
        bench.pair(scores, ["c1", "c2"], ["t1", "t3"])
