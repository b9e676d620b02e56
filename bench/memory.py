"""Does chat memory recall?  A scripted multi-session benchmark.

    python bench/memory.py                      # retrieval recall only (~1 min on one CPU thread)
    python bench/memory.py --answers 32 -m SmolLM2-135M-Instruct   # plus answer accuracy with a chat model

In the spirit of LongMemEval / MSC: each of --users conversations (a user
talking with the character, three sessions days apart) states 4 facts in
session 1 among small talk; session 2 is 110 lines of distractors, some of
them sharing words with the facts ("my friend's car", "the city council") and
8 of them someone else's version of a fact ("My friend's dog is called Max.");
session 3 asks about each fact after more distractors, as people ask: some
questions share words with the statement ("What am I allergic to?"), some
share none ("What colour is my car?" for "I drive an old green Volvo.").  The evidence for a
question is the turn that stated the fact.

Reported for every question, with the chat's own retrieval code
(charlora.memory.retrieve, threshold 0, recency as in chat):
- recall@k of the evidence turn for keyword (FTS5 BM25), embedding
  (all-MiniLM-L6-v2) and hybrid retrieval;
- the same for a plain truncated history: the newest lines that fit the
  tokens chat's memory tiers and short-term window take together;
- optionally (--answers N), answer accuracy of the chat model's greedy reply
  (the fact's key word in the reply) with chat's memory prompt vs the
  truncated history.  Summaries are extractive here (fast and deterministic).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlora.dialogue import Line  # noqa: E402
from charlora.memory import ChatMemory, MemorySettings  # noqa: E402
from charlora.memory.retrieve import METHODS, retrieve  # noqa: E402
from charlora.prompt import build_prompt  # noqa: E402

NAME, USER = "Morgan", "Sam"
DAY = 86400.0
# (statement, question, follow-up, values): the value goes in the statement and is the question's answer;
# the follow-up names the value and can be answered by recall alone (the "by name" columns).
FACTS = [
    ("My dog is called {}.", "What's my dog called again?", "Does {} still chase the postman?",
     ["Biscuit", "Pepper", "Waffles", "Juniper"]),
    ("I moved to {} last spring.", "Which city did I move to?", "Is {} nice this time of year?",
     ["Leeds", "Bristol", "Porto", "Ghent"]),
    ("I work as a {} at the hospital.", "What is my job at the hospital?", "Is being a {} hard work?",
     ["nurse", "porter", "radiographer", "chef"]),
    ("My sister {} is getting married in June.", "What's my sister's name?", "How is {} feeling these days?",
     ["Ana", "Priya", "Greta", "Maeve"]),
    ("I'm allergic to {}, so be careful with snacks.", "What am I allergic to?", "Should I avoid {} at the party?",
     ["peanuts", "shellfish", "sesame", "kiwi"]),
    ("I drive an old {} Volvo.", "What colour is my car?", "Do you like the colour {}?",
     ["green", "orange", "silver", "maroon"]),
    ("My birthday is on the {} of March.", "When is my birthday?", "What shall I do on the {}?",
     ["ninth", "second", "twentieth", "fifth"]),
    ("I've been learning the {} for two years.", "Which instrument have I been learning?", "Is the {} difficult?",
     ["cello", "oboe", "banjo", "harp"]),
    ("My favourite dish is {}.", "What is my favourite food?", "Where can I get good {}?",
     ["paella", "ramen", "moussaka", "pierogi"]),
    ("I support {}, win or lose.", "Which football team do I support?", "Did {} win at the weekend?",
     ["Arsenal", "Celtic", "Ajax", "Napoli"]),
    ("I'm reading {} at the moment.", "What book am I reading?", "Have you read {}?",
     ["Middlemarch", "Dune", "Rebecca", "Beloved"]),
    ("My son {} just started school.", "What's my son's name?", "Do you think {} likes his teacher?",
     ["Tomas", "Oskar", "Felix", "Rami"]),
    ("Next month I'm flying to {} for a holiday.", "Where am I going on holiday?", "What should I see in {}?",
     ["Lisbon", "Oslo", "Kyoto", "Tunis"]),
    ("I'm terrified of {}.", "What am I scared of?", "Why are people afraid of {}?",
     ["spiders", "heights", "clowns", "thunder"]),
    ("On weekends I go {} with friends.", "What do I do at the weekend?", "Is {} dangerous?",
     ["climbing", "sailing", "birdwatching", "bouldering"]),
    ("I'm learning {} in the evenings.", "Which language am I studying?", "Is {} grammar hard?",
     ["Japanese", "Welsh", "Finnish", "Greek"]),
]
SMALL_TALK = [
    "The weather has been strange this week.", "I had toast for breakfast.", "The bus was late again.",
    "Did you see the news this morning?", "I should really tidy the kitchen.", "It's been a long day.",
    "The neighbours are painting their fence.", "I watched a documentary about whales.", "My phone battery died.",
    "The coffee here is not great.", "I keep forgetting my umbrella.", "There's a new bakery on the corner.",
    "I think it might snow tonight.", "The train was packed this morning.", "I found an old photo album.",
    "I need new shoes.", "The library was closed today.", "I tried a new recipe for soup.",
    "The park was full of people.", "My laptop is so slow.", "I stayed up too late reading the news.",
    "The market had lovely tomatoes.", "I'm thinking of repainting the hallway.", "There was a power cut last night.",
    "The post office queue was enormous.", "I can't decide what to watch tonight.", "My plants need watering.",
    "The roadworks outside are so loud.", "I went for a walk by the river.", "The cinema is showing old films.",
    # near misses: they share words with the facts without stating them
    "My friend's car broke down on the motorway.", "The city council closed the main road again.",
    "My colleague is allergic to everything, poor thing.", "The football on TV was boring last night.",
    "A wedding party was at the restaurant next to ours.", "Someone's dog barked all night.",
    "My neighbour plays the piano badly.", "The school fair is next week.", "I read an article about spiders.",
    "My cousin is learning to drive.", "The hospital car park costs a fortune.", "Holidays are so expensive now.",
    "My friend's birthday party was loud.", "The bookshop had a sale on novels.", "I don't understand modern music.",
    "The evening classes at the college look fun.", "I fancy something spicy for dinner.",
    "Weekends go by too fast.", "My brother wants a new job.", "The language on that show was awful.",
]
# Someone else's version of each fact: the hardest distractors, close in words and meaning.
CONFUSABLE = [
    "My friend's dog is called Max.", "My cousin moved to Madrid last year.", "My uncle works as a plumber.",
    "My colleague's sister got married in May.", "My flatmate is allergic to cats.", "My dad drives a blue Ford.",
    "My mum's birthday is in October.", "My niece is learning the violin.", "My brother's favourite dish is curry.",
    "My boss supports Chelsea.", "My partner is reading a thriller.", "My neighbour's son is called Jack.",
    "My aunt is flying to Rome next week.", "My friend is terrified of snakes.", "My cousin goes running at weekends.",
    "My colleague is learning Spanish.",
]
REPLIES = [
    "Indeed, that is the way of things.", "Tell me more.", "How curious.", "I know the feeling well.",
    "Ha! Quite right.", "Is that so?", "The world is full of such things.", "Go on.", "That sounds tiresome.",
    "I could not agree more.", "What a tale.", "Fortune is fickle.", "Well said.", "Hmm, interesting.",
]


def conversation(rng: random.Random) -> tuple[list[list[Line]], list[tuple[int, int, str, str]]]:
    """Three sessions of lines, and the questions: (session 3 line index, session 1 evidence index, question,
    answer, kind)."""
    facts = rng.sample(FACTS, 4)
    values = [rng.choice(f[3]) for f in facts]
    talk = lambda: Line(USER, rng.choice(SMALL_TALK))
    reply = lambda: Line(NAME, rng.choice(REPLIES))
    s1: list[Line] = [Line(USER, "Hello there."), Line(NAME, "Well met.")]
    evidence = []
    for (statement, *_), value in zip(facts, values):
        s1 += [talk(), reply()]
        evidence.append(len(s1))
        s1 += [Line(USER, statement.format(value)), reply()]
    s1 += [talk(), reply()]
    s2 = [line for _ in range(55) for line in (talk(), reply())]
    for i, other in enumerate(rng.sample(CONFUSABLE, 8)):  # spread through session 2
        s2[12 * i + 2] = Line(USER, other)
    s3 = [line for _ in range(10) for line in (talk(), reply())]
    questions = []
    # Every attribute question before any by-name one: a by-name question says the answer
    # ("Should I avoid peanuts at the party?") and would leak it into the recent lines.
    order = [(i, "attribute") for i in rng.sample(range(4), 4)] + [(i, "by name") for i in rng.sample(range(4), 4)]
    for i, kind in order:
        s3 += [talk(), reply(), talk(), reply()]
        text = facts[i][1] if kind == "attribute" else facts[i][2].format(values[i])
        questions.append((len(s3), evidence[i], text, values[i], kind))
        s3 += [Line(USER, text), reply()]
    return [s1, s2, s3], questions


def truncated(history: list[Line], budget: int, count) -> list[Line]:
    """The newest lines whose build_prompt fits `budget` tokens: the memory-less baseline."""
    lines: list[Line] = []
    for line in reversed(history):
        if count(build_prompt([line, *lines], NAME)) > budget:
            break
        lines.insert(0, line)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=8, help="conversations (4 questions each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-k", type=int, nargs="+", default=[1, 3, 5, 10])
    p.add_argument("-m", "--model_name", default="SmolLM2-135M-Instruct", help="model folder: tokenizer for budgets; answers")
    p.add_argument("--models_dir", default="models")
    p.add_argument("--answers", type=int, default=0, help="answer this many questions with the model (0: none)")
    p.add_argument("--out", default="runs/memory_bench.json")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from charlora.memory.embed import MiniLM

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(Path(args.models_dir) / args.model_name)
    count = lambda text: len(tokenizer(text)["input_ids"])
    settings = MemorySettings()
    # What memory's tiers and the short-term window may take together: the baseline gets the same.
    baseline_budget = (settings.short_term_tokens + settings.summary_tokens + settings.facts_tokens
                       + settings.recall_tokens)
    started = time.time()
    embedder = MiniLM()
    rng = random.Random(args.seed)
    kmax = max(args.k)
    kinds = ("attribute", "by name")
    found = {(m, kind): {k: 0 for k in args.k} for m in (*METHODS, "truncated") for kind in kinds}
    asked = {kind: 0 for kind in kinds}
    answered = []  # (question, answer, memory prompt, truncated prompt)
    n_questions = 0
    tmp = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    for u in range(args.users):
        sessions, questions = conversation(rng)
        clock_start = 1_767_225_600.0 + u * 30 * DAY
        clock = {"now": clock_start}

        def tick():
            clock["now"] += 30
            return clock["now"]

        mem = ChatMemory.open(MemorySettings(memory_dir=tmp / f"user{u}"), NAME, USER, count_tokens=count,
                              embedder=embedder, clock=tick)
        everything: list[Line] = []
        evidence_ids = []
        for s, lines in enumerate(sessions):
            clock["now"] = clock_start + (0, 2, 5)[s] * DAY
            if s:
                mem.new_session()
            history: list[Line] = []
            asks = {q[0]: q for q in questions} if s == 2 else {}
            for i, line in enumerate(lines):
                history.append(line)
                everything.append(line)
                mem.record(line)
                if s == 0 and i in [q[1] for q in questions]:
                    evidence_ids.append((i, mem.ids[-1]))
                if i not in asks:
                    continue
                _, ev_index, question, answer, kind = asks[i]
                asked[kind] += 1
                evidence = dict(evidence_ids)[ev_index]
                n_questions += 1
                window = mem.ids[mem.window(history, 5):]
                for method in METHODS:
                    hits = retrieve(mem.store, question, method, embedder, exclude_turns=window, k=kmax,
                                    now=clock["now"])
                    ranked = [h.id for h in hits if h.kind == "turn"]
                    for k in args.k:
                        found[(method, kind)][k] += evidence in ranked[:k]
                kept = truncated(everything, baseline_budget, count)
                for k in args.k:
                    found[("truncated", kind)][k] += sessions[0][ev_index] in kept  # a fact is said once
                if kind == "attribute" and len(answered) < args.answers:
                    memory_prompt = build_prompt(mem.context(history, 5, None), NAME)
                    answered.append((question, answer, memory_prompt, build_prompt(kept, NAME)))
        mem.store.close()
    retrieval_s = time.time() - started

    def rate(m, k, which=kinds):
        return sum(found[(m, kind)][k] for kind in which) / sum(asked[kind] for kind in which)

    rows = ("keyword", "embedding", "hybrid", "truncated")
    result = {"users": args.users, "questions": n_questions, "asked": asked, "seed": args.seed,
              "baseline_tokens": baseline_budget, "retrieval_seconds": round(retrieval_s, 1),
              "recall": {m: {"all": {k: rate(m, k) for k in args.k},
                             **{kind: {k: rate(m, k, [kind]) for k in args.k} for kind in kinds}} for m in rows}}
    print(f"{n_questions} questions ({asked['attribute']} by attribute, {asked['by name']} by name), seed {args.seed}, "
          f"{args.users} conversations of {sum(map(len, sessions))} lines; truncated baseline: newest lines within "
          f"{baseline_budget} tokens; {retrieval_s:.0f} s")
    print("| retrieval | " + " | ".join(f"recall@{k}" for k in args.k) + " | "
          + " | ".join(f"recall@5 {kind}" for kind in kinds) + " |")
    print("| --- |" + " --- |" * (len(args.k) + len(kinds)))
    for m in rows:
        print(f"| {m} | " + " | ".join(f"{rate(m, k):.2f}" for k in args.k) + " | "
              + " | ".join(f"{rate(m, 5, [kind]):.2f}" for kind in kinds) + " |")

    if answered:
        result["answers"] = answer_accuracy(args, answered)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def answer_accuracy(args, answered) -> dict:
    """Greedy replies of the base model to the memory prompt and to the truncated one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(args.models_dir) / args.model_name
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    from charlora.reply import cut_reply

    started = time.time()
    right = {"memory": 0, "truncated": 0}
    examples = []
    for question, answer, memory_prompt, truncated_prompt in answered:
        row = {"question": question, "answer": answer, "memory_prompt": memory_prompt}
        for which, prompt in (("memory", memory_prompt), ("truncated", truncated_prompt)):
            enc = tokenizer(prompt, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=24, do_sample=False, repetition_penalty=1.1,
                                     pad_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            reply = cut_reply(text, NAME, [USER])[0]
            ok = answer.lower() in reply.lower()
            right[which] += ok
            row[which] = reply
        examples.append(row)
    n = len(answered)
    inside = {which: sum(a.lower() in p.lower() for _, a, *prompts in answered for p in [prompts[i]])
              for i, which in enumerate(("memory", "truncated"))}
    print(f"the answer is in the prompt: with memory {inside['memory']}/{n}, truncated history {inside['truncated']}/{n}")
    print(f"answer accuracy, {args.model_name} greedy, {n} questions: with memory {right['memory']}/{n}, "
          f"truncated history {right['truncated']}/{n} ({time.time() - started:.0f} s)")
    return {"n": n, "memory": right["memory"], "truncated": right["truncated"], "in_prompt": inside,
            "examples": examples}


if __name__ == "__main__":
    sys.exit(main())
