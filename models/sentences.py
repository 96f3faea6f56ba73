"""Sentences of the voice-interface domain: digits, numbers, times, dates,
amounts, commands, questions, plus plain English text read offline from
Debian packages (the fortune files; WordNet's usage examples) and from the
`wordfreq` package (the most frequent English words).

Every sentence is normalized text over the model vocabulary. Whether a
sentence is held out is a pure function of its text, so held-out sentences
never reach training whichever run or seed generated them.
"""

import random
import re
import zlib
from pathlib import Path

from num2words import num2words
from wordfreq import top_n_list

from engine.text import normalize

DIGITS = "zero one two three four five six seven eight nine".split()
MONTHS = ("january february march april may june july august september october "
          "november december").split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway", "garden"]
DEVICES = ["lights", "heating", "fan", "radio", "television", "music", "air conditioning", "alarm"]
PEOPLE = ["mom", "dad", "anna", "john", "the office", "doctor smith", "my sister", "peter", "maria"]
PLACES = ["the airport", "the station", "home", "work", "the nearest pharmacy", "london", "paris",
          "new york", "the city centre", "the hospital", "the supermarket"]
THINGS = ["milk", "bread", "eggs", "coffee", "apples", "rice", "batteries", "tickets", "flowers"]
CURRENCIES = ["dollars", "euros", "pounds"]
SUBJECTS = ["the weather", "the meeting", "the train", "my order", "the game", "the report",
            "the concert", "dinner", "the flight", "the package"]
ADJECTIVES = ["late", "early", "ready", "cancelled", "delayed", "finished", "open", "closed",
              "quiet", "busy", "cold", "warm"]
NOUNS = ["dog", "teacher", "river", "house", "car", "child", "window", "book", "garden", "city",
         "friend", "doctor", "market", "story", "road", "letter", "song", "boat", "mountain"]
VERBS_PAST = ["saw", "found", "liked", "painted", "visited", "opened", "closed", "followed",
              "helped", "watched", "carried", "remembered", "cleaned", "built"]
ADVERBS = ["slowly", "quickly", "quietly", "carefully", "again", "yesterday", "today",
           "last night", "this morning", "twice"]


def _digits(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(DIGITS) for _ in range(n))


def _number(rng: random.Random) -> str:
    return num2words(rng.choice([rng.randint(0, 20), rng.randint(20, 100), rng.randint(100, 1000),
                                 rng.randint(1000, 100000)]))


def _time(rng: random.Random) -> str:
    hour, minute = rng.randint(1, 12), rng.choice([0, 5, 10, 15, 20, 30, 45, rng.randint(1, 59)])
    spoken = num2words(hour)
    if minute == 0:
        spoken += rng.choice([" o'clock", ""])
    elif minute < 10:
        spoken += " oh " + num2words(minute)
    else:
        spoken += " " + num2words(minute)
    return spoken + rng.choice(["", " a m", " p m", " in the morning", " in the evening"])


def _date(rng: random.Random) -> str:
    day = num2words(rng.randint(1, 31), to="ordinal")
    month = rng.choice(MONTHS)
    year = rng.choice(["", " " + num2words(rng.randint(1990, 2035), to="year")])
    return rng.choice([f"the {day} of {month}{year}", f"{month} {day}{year}"])


def _amount(rng: random.Random) -> str:
    return f"{num2words(rng.randint(1, 999))} {rng.choice(CURRENCIES)}" + rng.choice(
        ["", f" and {num2words(rng.randint(1, 99))} cents"])


TEMPLATES = [
    lambda r: f"call {_digits(r, r.choice([7, 10]))}",
    lambda r: f"dial {_digits(r, r.randint(3, 11))}",
    lambda r: f"my phone number is {_digits(r, 10)}",
    lambda r: f"the code is {_digits(r, r.randint(4, 6))}",
    lambda r: f"enter pin {_digits(r, 4)}",
    lambda r: _digits(r, r.randint(1, 8)),
    lambda r: f"set an alarm for {_time(r)}",
    lambda r: f"wake me up at {_time(r)}",
    lambda r: f"remind me to call {r.choice(PEOPLE)} at {_time(r)}",
    lambda r: f"set a timer for {_number(r)} minutes",
    lambda r: f"what time is it in {r.choice(PLACES)}",
    lambda r: f"book a table for {num2words(r.randint(1, 12))} on {r.choice(DAYS)} at {_time(r)}",
    lambda r: f"schedule a meeting on {_date(r)}",
    lambda r: f"my birthday is on {_date(r)}",
    lambda r: f"send {_amount(r)} to {r.choice(PEOPLE)}",
    lambda r: f"the total is {_amount(r)}",
    lambda r: f"pay {_amount(r)}",
    lambda r: f"turn {r.choice(['on', 'off'])} the {r.choice(DEVICES)} in the {r.choice(ROOMS)}",
    lambda r: f"set the temperature to {num2words(r.randint(15, 30))} degrees",
    lambda r: f"play some {r.choice(['jazz', 'rock', 'classical music', 'news', 'radio'])}",
    lambda r: f"turn the volume {r.choice(['up', 'down'])}",
    lambda r: f"{r.choice(['stop', 'pause', 'resume', 'cancel', 'next', 'go back', 'yes', 'no'])}",
    lambda r: f"navigate to {r.choice(PLACES)}",
    lambda r: f"how long does it take to get to {r.choice(PLACES)}",
    lambda r: f"add {num2words(r.randint(1, 12))} {r.choice(THINGS)} to my shopping list",
    lambda r: f"what is {num2words(r.randint(1, 100))} times {num2words(r.randint(1, 100))}",
    lambda r: f"is {r.choice(SUBJECTS)} {r.choice(ADJECTIVES)}",
    lambda r: f"when does {r.choice(SUBJECTS)} start",
    lambda r: f"what's {r.choice(SUBJECTS)} like on {r.choice(DAYS)}",
    lambda r: f"text {r.choice(PEOPLE)} that i will be {r.choice(ADJECTIVES)}",
    lambda r: f"the {r.choice(NOUNS)} {r.choice(VERBS_PAST)} the {r.choice(NOUNS)} {r.choice(ADVERBS)}",
    lambda r: f"my {r.choice(NOUNS)} was {r.choice(ADJECTIVES)} {r.choice(ADVERBS)}",
    lambda r: f"we {r.choice(VERBS_PAST)} a {r.choice(NOUNS)} near the {r.choice(NOUNS)}",
    lambda r: f"there are {_number(r)} {r.choice(NOUNS)}s in {r.choice(PLACES)}",
    lambda r: f"flight {_digits(r, 3)} leaves from gate {num2words(r.randint(1, 60))} at {_time(r)}",
    lambda r: f"order number {_digits(r, r.randint(5, 8))}",
]


def spell_numbers(text: str) -> str:
    """Digits written out as they are said ("7" -> " seven ", "1,000" -> " one thousand ")."""
    return re.sub(r"\d+", lambda m: f" {num2words(int(m[0]))} ", text.replace(",", ""))


def is_held_out(sentence: str, percent: int = 10) -> bool:
    return zlib.crc32(sentence.encode()) % 100 < percent


def generate(n: int, seed: int, held_out: bool) -> list[str]:
    """n distinct-ish sentences from the grammar, from the held-out or the training side."""
    rng = random.Random(seed)
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < 200 * n:
        tries += 1
        sentence = normalize(rng.choice(TEMPLATES)(rng))
        if sentence and is_held_out(sentence) == held_out:
            out.append(sentence)
    return out


FORTUNE_DIR = "/usr/share/games/fortunes"  # Debian packages fortunes-min and fortunes
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def english_sentences(directory: str = FORTUNE_DIR, min_words: int = 3, max_words: int = 16) -> list[str]:
    """Plain English sentences from the fortune files, normalized, numbers dropped
    (a digit would be read out but vanish from the normalized text), sorted and unique."""
    out: set[str] = set()
    for path in sorted(Path(directory).glob("*")):
        if path.suffix or not path.is_file():
            continue
        for fortune in path.read_text(errors="ignore").split("\n%\n"):
            body = re.split(r"\n\s*--", fortune)[0]  # drop attributions
            for raw in _SENTENCE_END.split(" ".join(body.split())):
                if re.search(r"[0-9@#$%&*_<>{}\[\]|\\/=+~^]", raw) or ":" in raw:
                    continue
                text = normalize(raw)
                if min_words <= len(text.split()) <= max_words:
                    out.add(text)
    return sorted(out)


WORDNET_DIR = "/usr/share/wordnet"  # Debian package wordnet-base (WordNet 3.0 licence)


def wordnet_sentences(directory: str = WORDNET_DIR, min_words: int = 2) -> list[str]:
    """WordNet's usage examples (the quoted parts of its glosses, about 48,000 short sentences
    and phrases of everyday English), normalized, numbers dropped, sorted and unique."""
    out: set[str] = set()
    for pos in ("noun", "verb", "adj", "adv"):
        with open(Path(directory) / f"data.{pos}", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # the licence header
                    continue
                for raw in re.findall(r'"([^"]+)"', line.partition(" | ")[2]):
                    text = normalize(raw)
                    if not re.search(r"[0-9]", raw) and len(text.split()) >= min_words:
                        out.add(text)
    return sorted(out)


def frequent_words(n: int) -> list[str]:
    """The n most frequent English words (wordfreq: Wikipedia, subtitles, news, books, web
    text...) that are already normalized words of our vocabulary."""
    return [w for w in top_n_list("en", n) if normalize(w) == w and " " not in w]


def mixed(n: int, seed: int, held_out: bool, english: list[str], english_share: float) -> list[str]:
    """n sentences: about english_share of them from `english`, the rest from the grammar,
    all on the requested side of the held-out split."""
    rng = random.Random(seed)
    pool = [s for s in english if is_held_out(s) == held_out]
    n_english = min(len(pool), round(n * english_share))
    return rng.sample(pool, n_english) + generate(n - n_english, seed, held_out)
