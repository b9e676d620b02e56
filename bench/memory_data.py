"""Long multi-session conversations with questions and evidence turns, for bench/memory.py.

Two people talk (in chat terms: the user and the character) over 20 sessions
5-8 days apart (100-160 days, 440-460 turns).  Both tell the other about
their lives, so every fact has same-topic look-alikes: the other person's
version of it ("My sister is called Greta."), a third person's version said
by the same speaker ("My neighbour's sister is called Maeve."), and talk about
the topic that states nothing ("Sisters can drive you up the wall.").  The
questions name the person, as a question about a long conversation does:

- single:     "What is Caroline's sister called?"        (shares words with the evidence)
- paraphrase: "What name does Caroline's female sibling go by?"  (no content word of the evidence line;
              checked when the conversation is made)
- multi-hop:  "What job did Caroline's best friend just get?"  needs "My best friend Nadia came round."
              and, sessions later, "Nadia just got a job as a vet." (two evidence turns)
- temporal:   "When did Caroline run a half marathon?" (the turn that says it happened; an earlier
              plan, "I'm training for a half marathon", is the look-alike) and "Which came first for
              Caroline: X or Y?" (both events' turns)

Two banks of templates, names and small talk that share no wording: "tune"
(retrieval choices were measured on it) and "heldout" (reported, never tuned
on).  Everything is drawn from a seeded random.Random, so a (bank, seed) pair
is one fixed set of conversations.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from charlora.dialogue import Line
from charlora.memory.text import content_words

DAY = 86400.0
SESSIONS = 20
TURNS_PER_SESSION = 22
START = 1_767_225_600.0  # 2026-01-01 00:00 UTC

# A fact: (statement, third person's look-alike, topic talk, question, paraphrased question, values).
# {v} is the value, {P} the person the question is about.
BANKS = {
    "tune": {
        "people": ["Caroline", "Melanie", "Jordan", "Priya", "Marcus", "Elena", "Devon", "Ruth", "Omar",
                   "Hannah", "Theo", "Gwen", "Victor", "Nadia", "Simon", "Leah", "Kwame", "Ingrid", "Rafael",
                   "Tess"],
        "others": ["Nadia", "Boris", "Colette", "Dimitri", "Esme", "Fergus", "Gianna", "Harvey", "Imogen",
                   "Jasper", "Kirsty", "Lorcan", "Mabel", "Nikhil", "Odette", "Percy"],
        "facts": [
            ("My sister is called {v}.", "My neighbour's sister is called {v}.",
             "Sisters can drive you up the wall sometimes.", "What is {P}'s sister called?",
             "What name does {P}'s female sibling go by?", ["Ana", "Greta", "Maeve", "Joan", "Lila", "Nora"]),
            ("I work as a {v} at the hospital.", "My uncle works as a {v} at the clinic.",
             "Hospitals are so understaffed these days.", "What does {P} work as at the hospital?",
             "What is {P}'s occupation?", ["nurse", "porter", "radiographer", "pharmacist", "midwife", "surgeon"]),
            ("I'm allergic to {v}, so I have to be careful.", "My flatmate is allergic to {v}.",
             "Allergies seem to be everywhere now.", "What is {P} allergic to?", "Which food makes {P} ill?",
             ["peanuts", "shellfish", "sesame", "kiwi", "eggs", "mustard"]),
            ("I drive an old {v} Volvo.", "My dad drives a {v} Volvo.", "Volvos last forever if you look after them.",
             "What colour is {P}'s Volvo?", "What shade is {P}'s car painted?",
             ["green", "orange", "silver", "maroon", "white", "navy"]),
            ("I've been learning the {v} for two years.", "My niece is learning the {v} too.",
             "Music lessons are so expensive.", "Which instrument has {P} been learning?",
             "What does {P} play musically?", ["cello", "oboe", "banjo", "harp", "trumpet", "viola"]),
            ("My favourite dish is {v}.", "My brother's favourite dish is {v}.",
             "I could eat the same dish every day.", "What is {P}'s favourite dish?", "What meal does {P} like best?",
             ["paella", "ramen", "moussaka", "pierogi", "biryani", "gumbo"]),
            ("I support {v}, win or lose.", "My boss supports {v}.", "Football season starts again soon.",
             "Which team does {P} support?", "Which football club is {P} a fan of?",
             ["Arsenal", "Celtic", "Ajax", "Napoli", "Benfica", "Everton"]),
            ("I'm reading {v} at the moment.", "My book club picked {v} this month.",
             "I never finish books these days.", "What book is {P} reading?",
             "Which novel has {P} got on the go currently?",
             ["Middlemarch", "Dune", "Rebecca", "Beloved", "Emma", "Ulysses"]),
            ("My son {v} just started school.", "My colleague's son {v} started school too.",
             "The school run is chaos every morning.", "What is {P}'s son called?", "What's the name of {P}'s boy?",
             ["Tomas", "Oskar", "Felix", "Rami", "Hugo", "Ezra"]),
            ("Next month I'm flying to {v} for a holiday.", "My aunt is flying to {v} next week.",
             "Holidays are so expensive now.", "Where is {P} flying for a holiday?",
             "Which destination will {P} travel to on vacation?",
             ["Lisbon", "Oslo", "Kyoto", "Tunis", "Hanoi", "Quito"]),
            ("I'm terrified of {v}.", "My friend is terrified of {v}.", "Everyone is scared of something.",
             "What is {P} terrified of?", "What frightens {P} most?",
             ["spiders", "heights", "clowns", "thunder", "wasps", "crowds"]),
            ("On weekends I go {v} with friends.", "My cousin goes {v} at weekends.", "Weekends go by too fast.",
             "What does {P} do with friends on weekends?", "How does {P} spend Saturdays and Sundays?",
             ["climbing", "sailing", "birdwatching", "kayaking", "cycling", "surfing"]),
            ("I've started {v} lessons in the evenings.", "My colleague takes {v} lessons.",
             "Evening classes at the college look fun.", "What lessons is {P} taking in the evenings?",
             "Which language does {P} study after work?",
             ["Japanese", "Welsh", "Finnish", "Greek", "Polish", "Korean"]),
            ("My cat {v} is fourteen now.", "Our neighbour's cat {v} keeps visiting.",
             "Cats rule the house, don't they.", "What is {P}'s cat called?",
             "What's the name of {P}'s elderly pet?", ["Mittens", "Pickle", "Saffron", "Moss", "Ziggy", "Olive"]),
            ("I grew up in {v}.", "My partner grew up in {v}.",
             "Childhood towns always feel smaller when you go back.", "Where did {P} grow up?",
             "What is {P}'s hometown?", ["Leeds", "Bristol", "Ghent", "Cork", "Dundee", "Malmo"]),
            ("My birthday is on the {v} of March.", "My mum's birthday is on the {v} of May.",
             "Birthdays get less exciting every year.", "When is {P}'s birthday?", "On what date was {P} born?",
             ["ninth", "second", "twentieth", "fifth", "eleventh", "thirtieth"]),
        ],
        # multi-hop: (introduction of a named person, relation as the question says it)
        "relations": [("My best friend {N} came round for dinner.", "best friend"),
                      ("My boss is a guy called {N}.", "boss"),
                      ("My neighbour {N} has lived here for ages.", "neighbour"),
                      ("My cousin {N} is staying with us for a bit.", "cousin"),
                      ("My oldest mate {N} phoned me today.", "oldest mate")],
        # (news about the named person, question, values)
        "updates": [("{N} just got a job as a {v}.", "What job did {P}'s {rel} just get?",
                     ["vet", "pilot", "chef", "dentist", "librarian", "firefighter"]),
                    ("{N} has moved to {v}.", "Where has {P}'s {rel} moved to?",
                     ["Madrid", "Glasgow", "Boston", "Nairobi", "Perth", "Vienna"]),
                    ("{N} bought a {v} last week.", "What did {P}'s {rel} buy?",
                     ["canoe", "piano", "campervan", "motorbike", "greenhouse", "telescope"]),
                    ("{N} is getting married in {v}.", "When is {P}'s {rel} getting married?",
                     ["April", "July", "September", "October", "December", "February"])],
        # temporal: (it happened, the earlier plan, when-question, name of the event)
        "events": [("I ran my first half marathon this morning!", "I'm training for a half marathon, it's brutal.",
                    "When did {P} run a half marathon?", "the half marathon"),
                   ("We finally moved into the new flat today.", "We're looking at new flats this month.",
                    "When did {P} move into the new flat?", "moving into the new flat"),
                   ("I passed my driving test today!", "My driving test is coming up soon.",
                    "When did {P} pass the driving test?", "passing the driving test"),
                   ("I adopted a kitten this afternoon.", "I'm thinking about adopting a kitten.",
                    "When did {P} adopt a kitten?", "adopting the kitten"),
                   ("My promotion got confirmed today.", "There's a promotion at work I might go for.",
                    "When did {P} get the promotion?", "the promotion"),
                   ("I finally painted the bedroom today.", "The bedroom really needs painting.",
                    "When did {P} paint the bedroom?", "painting the bedroom"),
                   ("I gave my best man speech at the wedding today.", "I'm so nervous about the best man speech.",
                    "When did {P} give the best man speech?", "the best man speech"),
                   ("I had my wisdom tooth out this morning.", "My wisdom tooth is killing me.",
                    "When did {P} have the wisdom tooth out?", "the wisdom tooth")],
        "before": "Which came first for {P}: {a} or {b}?",
        "small_talk": [
            "The weather has been strange this week.", "I had toast for breakfast.", "The bus was late again.",
            "Did you see the news this morning?", "I should really tidy the kitchen.", "It's been a long day.",
            "The neighbours are painting their fence.", "I watched a documentary about whales.",
            "My phone battery died.", "The coffee here is not great.", "I keep forgetting my umbrella.",
            "There's a new bakery on the corner.", "I think it might snow tonight.",
            "The train was packed this morning.", "I found an old photo album.", "I need new shoes.",
            "The library was closed today.", "I tried a new recipe for soup.", "The park was full of people.",
            "My laptop is so slow.", "I stayed up too late last night.", "The market had lovely tomatoes.",
            "There was a power cut yesterday.", "The post office queue was enormous.",
            "I can't decide what to watch tonight.", "My plants need watering.", "The roadworks outside are loud.",
            "I went for a walk by the river.", "The cinema is showing old films.", "How was your week?"],
        "reactions": ["Oh really?", "That's lovely.", "Ha, I know the feeling.", "Tell me more.", "No way!",
                      "That sounds tiring.", "Good for you.", "Fair enough.", "How funny.", "Oh dear.",
                      "I'm glad to hear it.", "Interesting.", "Right, yes.", "Wow."],
    },
    "heldout": {
        "people": ["Beatrice", "Callum", "Daphne", "Emeka", "Fiona", "Gareth", "Hiroshi", "Isabel", "Jamal",
                   "Katya", "Lucian", "Miriam", "Nils", "Orla", "Pavel", "Quinn", "Rosa", "Stefan", "Tamsin",
                   "Ulrich"],
        "others": ["Wendell", "Yasmin", "Zach", "Aurelia", "Benedict", "Cressida", "Desmond", "Elodie", "Florian",
                   "Genevieve", "Horace", "Ione", "Jolyon", "Kezia", "Lysander", "Marisol"],
        "facts": [
            ("My brother {v} lives in Canada now.", "My friend's brother {v} moved abroad too.",
             "Brothers never phone enough.", "What is the name of {P}'s brother?", "Who is {P}'s male sibling?",
             ["Liam", "Kofi", "Anton", "Ravi", "Jonah", "Bruno"]),
            ("I'm a {v} by trade.", "My father-in-law was a {v} by trade too.", "Trades are hard on the body.",
             "What is {P}'s trade?", "How does {P} earn a living?",
             ["plumber", "carpenter", "electrician", "baker", "welder", "glazier"]),
            ("I can't eat {v}, my stomach hates it.", "My housemate can't eat {v} either.",
             "Eating out with dietary needs is a pain.", "What can't {P} eat?",
             "Which food disagrees with {P}'s digestion?", ["gluten", "dairy", "garlic", "onions", "lentils", "soy"]),
            ("My bike is a bright {v} racer.", "My nephew has a {v} racer.", "Bike lanes here are terrible.",
             "What colour is {P}'s bike?", "What hue is {P}'s bicycle?",
             ["yellow", "purple", "teal", "red", "black", "lime"]),
            ("I sing {v} in a choir on Thursdays.", "My grandmother sang {v} in her church choir.",
             "Choirs are good for the soul.", "Which part does {P} sing in the choir?",
             "What vocal range does {P} perform in?", ["alto", "tenor", "soprano", "bass", "baritone", "mezzo"]),
            ("Nothing beats a bowl of {v}.", "My flatmate lives on {v}.", "Comfort food is underrated.",
             "What bowl of food does {P} love?", "Which meal is {P}'s top comfort pick?",
             ["pho", "chowder", "laksa", "goulash", "congee", "risotto"]),
            ("I've been a {v} season ticket holder for years.", "My manager holds {v} season tickets.",
             "Season tickets cost a fortune.", "Which club does {P} hold a season ticket for?",
             "What team does {P} cheer for?", ["Wolves", "Hibs", "Rangers", "Leicester", "Fulham", "Brentford"]),
            ("Just finished {v}, what a book.", "My sister just finished {v}.", "My reading pile keeps growing.",
             "Which book did {P} just finish?", "What novel has {P} recently completed?",
             ["Persuasion", "Kindred", "Solaris", "Frankenstein", "Dracula", "Stoner"]),
            ("Our daughter {v} turned six.", "My colleague's daughter {v} turned six too.",
             "Six-year-olds have so much energy.", "What is {P}'s daughter called?",
             "What's the name of {P}'s little girl?", ["Isla", "Freya", "Amara", "Zoe", "Ines", "Maya"]),
            ("We're going camping in {v} this summer.", "My cousin went camping in {v} last year.",
             "Camping is fun until it rains.", "Where is {P} going camping?", "Which region will {P} pitch a tent in?",
             ["Snowdonia", "Cornwall", "Skye", "Dartmoor", "Brittany", "Galloway"]),
            ("I have a real phobia of {v}.", "My nan has a phobia of {v}.", "Phobias are strange things.",
             "What does {P} have a phobia of?", "What scares {P} the most?",
             ["snakes", "needles", "bridges", "dogs", "lifts", "moths"]),
            ("Every Sunday morning I go {v}.", "My uncle goes {v} every Sunday too.", "Sunday mornings are sacred.",
             "What does {P} do on Sunday mornings?", "How does {P} start the weekend's final day?",
             ["swimming", "rowing", "running", "fishing", "golfing", "skating"]),
            ("I took up {v} dancing last winter.", "My aunt does {v} dancing.", "Dance classes are full of retirees.",
             "What kind of dancing did {P} take up?", "Which dance style does {P} practise?",
             ["salsa", "tango", "swing", "ballroom", "flamenco", "tap"]),
            ("Our dog {v} is a rescue greyhound.", "My friend's dog {v} is a greyhound too.",
             "Greyhounds sleep all day.", "What is {P}'s greyhound called?", "What's the name of {P}'s adopted hound?",
             ["Bolt", "Dot", "Rocket", "Pixie", "Bramble", "Comet"]),
            ("I was raised in {v}.", "My wife was raised in {v}.", "Small towns are lovely but dull.",
             "Where was {P} raised?", "Which town did {P} spend their childhood in?",
             ["Aberdeen", "Norwich", "Galway", "Swansea", "Exeter", "Derry"]),
            ("Our anniversary is on the {v} of June.", "My parents' anniversary is on the {v} of August.",
             "Anniversaries sneak up on you.", "When is {P}'s anniversary?", "On what date did {P} get married?",
             ["third", "sixth", "tenth", "twelfth", "fifteenth", "nineteenth"]),
        ],
        "relations": [("Have I told you about my flatmate {N}?", "flatmate"),
                      ("My manager {N} is off sick again.", "manager"),
                      ("My godson {N} visited at the weekend.", "godson"),
                      ("My old teacher {N} wrote me a letter.", "old teacher"),
                      ("My uncle {N} is seventy now.", "uncle")],
        "updates": [("{N} has adopted a {v}.", "What pet has {P}'s {rel} adopted?",
                     ["parrot", "tortoise", "ferret", "rabbit", "hamster", "goat"]),
                    ("{N} qualified as a {v} at last.", "What has {P}'s {rel} qualified as?",
                     ["lawyer", "architect", "accountant", "paramedic", "optician", "surveyor"]),
                    ("{N} is opening a {v} in town.", "What is {P}'s {rel} opening?",
                     ["cafe", "bakery", "bookshop", "barbershop", "gym", "florist"]),
                    ("{N} broke a {v} skiing.", "What did {P}'s {rel} break?",
                     ["wrist", "leg", "ankle", "collarbone", "rib", "thumb"])],
        "events": [("I climbed Ben Nevis yesterday.", "I want to climb Ben Nevis before summer.",
                    "On which day did {P} climb Ben Nevis?", "climbing Ben Nevis"),
                   ("I handed in my thesis today.", "My thesis is nearly done.",
                    "On which day did {P} hand in the thesis?", "handing in the thesis"),
                   ("We got the keys to our allotment today.", "We're on the waiting list for an allotment.",
                    "On which day did {P} get the allotment?", "getting the allotment"),
                   ("I sold my old van this week.", "I should really sell my old van.",
                    "On which day did {P} sell the van?", "selling the van"),
                   ("I performed at the open mic night yesterday.", "I signed up for an open mic night.",
                    "On which day did {P} perform at the open mic?", "the open mic"),
                   ("I had my first tattoo done today.", "I keep thinking about getting a tattoo.",
                    "On which day did {P} get a tattoo?", "the tattoo"),
                   ("I quit smoking today, for good.", "I really need to quit smoking.",
                    "On which day did {P} quit smoking?", "quitting smoking"),
                   ("I finished knitting the jumper last night.", "I'm knitting a jumper for winter.",
                    "On which day did {P} finish the jumper?", "the jumper")],
        "before": "What happened earlier for {P}, {a} or {b}?",
        "small_talk": [
            "Traffic was a nightmare this morning.", "I burnt the porridge again.", "My socks don't match today.",
            "The radio played my favourite song.", "It's chucking it down outside.", "I'm shattered.",
            "Someone parked across my drive.", "I binged a crime series.", "The printer jammed twice.",
            "The tea at work is dreadful.", "I lost my gloves somewhere.", "A new deli opened by the station.",
            "It was frosty first thing.", "The tram was delayed.", "I cleared out the loft.", "I need a haircut.",
            "The gym was heaving.", "I made a curry from scratch.", "The beach was windy.",
            "My headphones broke.", "I couldn't sleep at all.", "The farm shop had fresh eggs.",
            "The boiler is playing up.", "The bank put me on hold for ages.", "Nothing good on telly tonight.",
            "The garden is overgrown.", "The drilling next door never stops.", "I walked along the canal.",
            "The theatre has a new play on.", "What have you been up to?"],
        "reactions": ["Blimey.", "Aw, nice.", "Same here.", "Go on then.", "You're joking!", "Sounds exhausting.",
                      "Well done you.", "Makes sense.", "That's hilarious.", "Oh no.", "Pleased for you.",
                      "Huh.", "Quite.", "Brilliant."],
    },
}
KINDS = ("single", "paraphrase", "multi-hop", "temporal")


@dataclass
class Question:
    kind: str
    text: str
    evidence: list[int]  # positions in Conversation.lines
    answer: str


@dataclass
class Conversation:
    speakers: tuple[str, str]  # (user, character) in chat's terms
    lines: list[Line] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)  # session index of each line
    questions: list[Question] = field(default_factory=list)


def _stem(word: str) -> str:
    return word.removesuffix("'s")[:5]


def shares_content_word(a: str, b: str) -> bool:
    """Do `a` and `b` share a content word (first five letters: "painted"/"painting", "rescue"/"rescued")?"""
    return bool({_stem(w) for w in content_words(a)} & {_stem(w) for w in content_words(b)})


def chatty_turn(text: str, rng: random.Random, b: dict, avoid: str = "") -> str:
    """--chatty: the turn as people type in a chat, one to three sentences: a
    reaction to what was just said before it half the time, small talk after
    it half the time.  The extra sentences come from the same bank's small talk
    and reactions, so they repeat across the conversation as real chit-chat does
    and dilute a fact's turn for both keyword and embedding search.  `avoid`:
    paraphrased questions about this turn, which must still share no content
    word with it (redrawn until they don't)."""
    for _ in range(50):
        before = rng.choice(b["reactions"]) if rng.random() < 0.5 else ""
        after = rng.choice(b["small_talk"]) if rng.random() < 0.5 else ""
        out = " ".join(x for x in (before, text, after) if x)
        if not avoid or not shares_content_word(avoid, out):
            return out
    return text


def conversation(bank: str, rng: random.Random, pad: random.Random | None = None) -> Conversation:
    """One conversation of SESSIONS sessions and its questions, drawn from `bank`.
    pad: a second stream; with it every turn is padded by chatty_turn, and the
    plain conversation under the padding is the one drawn without it."""
    b = BANKS[bank]
    a_name, b_name = rng.sample(b["people"], 2)
    # Each item: (session, speaker, text, question maker or None); questions refer to items by index.
    items: list[tuple[int, str, str]] = []
    pending: list[tuple[str, str, list[int], str]] = []  # (kind, question, evidence item indexes, answer)
    avoid: dict[int, str] = {}  # item index -> its paraphrased question, without the name

    def say(session: int, who: str, text: str) -> int:
        items.append((session, who, text))
        return len(items) - 1

    late = lambda lo=0: rng.randrange(lo, SESSIONS)
    others = rng.sample(b["others"], len(b["others"]))
    for who in (a_name, b_name):
        for stmt, other, topic, q, para, values in b["facts"]:
            mine, theirs = rng.sample(values, 2)
            ev = say(late(), who, stmt.format(v=mine))
            say(late(), who, other.format(v=theirs))
            say(late(), who, topic)
            assert not shares_content_word(para.format(P=""), stmt.format(v=mine)), (para, stmt)
            pending.append(("single", q.format(P=who), [ev], mine))
            pending.append(("paraphrase", para.format(P=who), [ev], mine))
            avoid[ev] = para.format(P="")
        relations = rng.sample(b["relations"], len(b["relations"]))
        for intro, rel in relations[:3]:
            n = others.pop()
            s0 = rng.randrange(0, SESSIONS // 2)
            first = say(s0, who, intro.format(N=n))
            for news, q, values in rng.sample(b["updates"], 2):
                v = rng.choice(values)
                second = say(late(s0 + 1), who, news.format(N=n, v=v))
                pending.append(("multi-hop", q.format(P=who, rel=rel), [first, second], v))
        # The other relations are look-alikes: the same intros about other people, no questions.
        for intro, rel in relations[3:]:
            say(late(), who, intro.format(N=others.pop()))
        done = {}
        for did, plan, q, name in b["events"]:
            s_plan = rng.randrange(0, SESSIONS - 2)
            say(s_plan, who, plan)
            done[name] = (say(late(s_plan + 1), who, did), q)
            pending.append(("temporal", q.format(P=who), [done[name][0]], ""))
        names = list(done)
        rng.shuffle(names)
        for x, y in zip(names[0::2], names[1::2]):
            first = x if items[done[x][0]][0] <= items[done[y][0]][0] else y
            pending.append(("temporal", b["before"].format(P=who, a=x, b=y), [done[x][0], done[y][0]], first))

    conv = Conversation((a_name, b_name))
    where: dict[int, int] = {}
    t = START
    for s in range(SESSIONS):
        t += rng.randint(5, 8) * DAY  # 100-160 days in all
        said = [i for i, item in enumerate(items) if item[0] == s]
        rng.shuffle(said)
        # Every item is followed by the other person's reaction; small talk fills the session.
        slots = [("item", i) for i in said] + [("talk", None)] * max(0, TURNS_PER_SESSION // 2 - len(said))
        rng.shuffle(slots)
        clock = t + 19 * 3600
        for what, i in slots:
            if what == "item":
                who, text = items[i][1], items[i][2]
                where[i] = len(conv.lines)
            else:
                who, text = rng.choice((a_name, b_name)), rng.choice(b["small_talk"])
            for line in (Line(who, text), Line(b_name if who == a_name else a_name, rng.choice(b["reactions"]))):
                conv.lines.append(line)
                conv.times.append(clock)
                conv.sessions.append(s)
                clock += 40
    conv.questions = [Question(kind, text, [where[i] for i in ev], answer) for kind, text, ev, answer in pending]
    if pad is not None:
        item_at = {pos: i for i, pos in where.items()}
        conv.lines = [Line(l.speaker, chatty_turn(l.text, pad, b, avoid.get(item_at.get(pos, -1), "")))
                      for pos, l in enumerate(conv.lines)]
    return conv


def conversations(bank: str, n: int, seed: int, chatty: bool = False) -> list[Conversation]:
    rng = random.Random(f"{bank}-{seed}")
    pad = random.Random(f"{bank}-{seed}-chatty") if chatty else None
    return [conversation(bank, rng, pad) for _ in range(n)]
