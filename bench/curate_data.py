"""A synthetic instruction data set with planted problems and a truth file, for bench/curate_bench.py.

    python bench/curate_data.py --records 200000 --out /tmp/curate-bench/data

Writes `inputs/part-*.jsonl` (the data curate reads, records shuffled across the parts),
`truth.jsonl` (one line per input line: what was planted there) and `nemo/part-*.jsonl`
(the same records flattened to {"id", "text"} with the response as text, the only shape
NeMo Curator's filters take).

Text is pseudo-English: words drawn from a Zipf distribution over common English words
and generated words, in sentences and sometimes paragraphs or bullet lists. Prompt and
response lengths are log-normal (most records are short, a few run to thousands of words).
Planted, each with its truth:

- exact duplicates: a copy of a base record, in another format or with other whitespace;
- near duplicates: a copy with one word replaced, inserted or deleted per 120 words (at
  least one), or with only case and punctuation changed, in clusters of 2 or 3 records
  (bases of 80+ words, so every copy's 5-word-shingle Jaccard similarity is about 0.85 or more);
- PII of each of the 9 types curate knows, in the shapes listed in `pii_value`, with the
  exact strings planted;
- ordinary prose numbers (dates, versions, prices, times, counts) that must survive;
- contamination: pairs of otherwise unrelated records sharing a 20 to 40-word passage;
- low-quality responses (symbol soup, repeated lines, repeated phrases, "...", prompt echoes);
- malformed lines (broken JSON, missing fields, wrong types, blank lines, invalid UTF-8).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

COMMON_WORDS = (
    "the of and to a in is it you that he was for on are with as his they be at one have this from or "
    "had by hot word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find any new work part take get place made live "
    "where after back little only round man year came show every good me give our under name very "
    "through just form sentence great think say help low line differ turn cause much mean before move "
    "right boy old too same tell does set three want air well also play small end put home read hand "
    "port large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth father "
    "head stand own page should country found answer school grow study still learn plant cover food "
    "sun four between state keep eye never last let thought city tree cross farm hard start might story "
    "saw far sea draw left late run while press close night real life few north open seem together next "
    "white children begin got walk example ease paper group always music those both mark often letter "
    "until mile river car feet care second book carry took science eat room friend began idea fish "
    "mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual "
    "young ready above ever red list though feel talk bird soon body dog family direct pose leave song "
    "measure door product black short numeral class wind question happen complete ship area half rock "
    "order fire south problem piece told knew pass since top whole king space heard best hour better "
    "true during hundred five remember step early hold west ground interest reach fast verb sing listen "
    "six table travel less morning ten simple several vowel toward war lay against pattern slow center "
    "love person money serve appear road map rain rule govern pull cold notice voice unit power town "
    "fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct "
    "able pound done beauty drive stood contain front teach week final gave green oh quick develop ocean"
)
SYLLABLE_TEXT = (
    "ka to ri mel an sor ven ta lu gri pho nex dor bel qui sta tra ple mon zar fi ce dro wen lar "
    "cho vis tem pur hal gon ner sil ba ox ry un der in tro"
)
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one paragraph.",
    "You are a support agent for a software company.",
    "Answer as a careful teacher would, step by step.",
    "You are a travel planner.",
    "Reply in plain English without jargon.",
    "You are a code reviewer.",
    "You summarize documents for busy readers.",
]
INSTRUCTIONS = [
    "Explain the following",
    "Summarize this text",
    "Answer the question",
    "Rewrite this paragraph",
    "Describe",
    "What do you think about",
    "Give an overview of",
    "List the main points of",
]
PII_TYPES = (
    "EMAIL",
    "PHONE",
    "IPV4",
    "IPV6",
    "CARD",
    "SSN",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "API_TOKEN",
)
PII_SENTENCES = {
    "EMAIL": ["You can write to {} about it.", "Contact: {}", "Send the report to {} by Friday."],
    "PHONE": ["Call {} for support.", "My number is {}.", "Phone: {}"],
    "IPV4": ["The server at {} is down.", "Ping {} to check it.", "host={}"],
    "IPV6": ["The node listens on {}.", "Route traffic to {} please.", "addr {}"],
    "CARD": ["Charge it to card {}.", "My card number is {}.", "card: {}"],
    "SSN": ["My SSN is {}.", "SSN {} is on the form.", "Social security number: {}"],
    "AWS_ACCESS_KEY": ["Use access key {} for the bucket.", "AWS_ACCESS_KEY_ID={}", "key id {}"],
    "AWS_SECRET_KEY": [
        "aws_secret_access_key = {}",
        'secret: "{}"',
        "Set SECRET_KEY={} in the env.",
        "The AWS secret access key is {} so keep it safe.",
    ],
    "API_TOKEN": ["Authorization: Bearer {}", "token={}", "Use the token {} to log in."],
}
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
MONTH_NAMES = "January February March April May June July August September October November December"
SYMBOL_SOUP = "#$%^&*()[]{}<>|~@!?;:/\\=+-_"


def luhn_complete(digits: str) -> str:
    """`digits` plus the check digit that makes the Luhn sum a multiple of 10."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # these positions are doubled once the check digit is appended
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return digits + str((10 - total % 10) % 10)


def pii_value(kind: str, rng: random.Random) -> str:
    """One realistic value of a PII type, in one of several common shapes."""
    digit = lambda count: "".join(rng.choice("0123456789") for _ in range(count))  # noqa: E731
    if kind == "EMAIL":
        first = rng.choice(["jane", "john", "a.smith", "m_lee", "kim", "r.oconnor", "li.wei", "ops", "sales"])
        local = first + rng.choice(["", str(rng.randint(1, 999)), "+news", ".work"])
        domain = rng.choice(["example.com", "mail.example.org", "corp.example.co.uk", "example.io", "web.de"])
        return f"{local}@{domain}"
    if kind == "PHONE":
        area, exchange, line = str(rng.randint(201, 989)), str(rng.randint(200, 999)), digit(4)
        shapes = [
            f"+1 ({area}) {exchange}-{line}",
            f"{area}-{exchange}-{line}",
            f"({area}) {exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"1-800-{exchange}-{line}",
            f"+44 20 {digit(4)} {digit(4)}",
            f"+49 30 {digit(8)}",
            f"+33 6 {digit(2)} {digit(2)} {digit(2)} {digit(2)}",
            f"030 {digit(7)}",
            f"06 {digit(2)} {digit(2)} {digit(2)} {digit(2)}",
            f"+49{digit(11)}",
        ]
        return rng.choice(shapes)
    if kind == "IPV4":
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    if kind == "IPV6":
        groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
        shape = rng.randrange(3)
        if shape == 0:
            return ":".join(f"{int(group, 16):04x}" for group in groups)
        if shape == 1:
            return "2001:db8::" + ":".join(groups[5:])
        return ":".join(groups)
    if kind == "CARD":
        prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)])
        number = luhn_complete(prefix + digit(length - len(prefix) - 1))
        if length == 15:
            parts = [number[:4], number[4:10], number[10:]]
        else:
            parts = [number[i : i + 4] for i in range(0, 16, 4)]
        return rng.choice([" ", "-", ""]).join(parts)
    if kind == "SSN":
        area = rng.choice([n for n in range(1, 900) if n != 666])
        return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == "AWS_ACCESS_KEY":
        return rng.choice(["AKIA", "ASIA"]) + "".join(rng.choice(UPPER_DIGITS) for _ in range(16))
    if kind == "AWS_SECRET_KEY":
        return "".join(rng.choice(ALNUM + "/+") for _ in range(40))
    prefix = rng.choice(["ghp_", "gho_", "github_pat_", "xoxb-", "sk-", "AIza"])
    body_length = {"ghp_": 36, "gho_": 36, "github_pat_": 40, "xoxb-": 30, "sk-": 40, "AIza": 35}[prefix]
    body = "".join(rng.choice(ALNUM) for _ in range(body_length))
    if prefix == "sk-":
        body = body[:-1] + rng.choice("0123456789")  # real keys hold digits
    return prefix + body


def prose_number(rng: random.Random) -> str:
    """A number that is not personal data and must come out of curate unchanged."""
    shapes: list[Callable[[], str]] = [
        lambda: f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        lambda: f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1990, 2030)}",
        lambda: f"{rng.choice(MONTH_NAMES.split())} {rng.randint(1, 28)}, {rng.randint(1990, 2030)}",
        lambda: f"v{rng.randint(0, 20)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
        lambda: f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
        lambda: f"${rng.randint(1, 9)},{rng.randint(0, 999):03d}.{rng.randint(0, 99):02d}",
        lambda: f"€{rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
        lambda: f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}",
        lambda: f"{rng.randint(1, 99)}.{rng.randint(0, 9)}%",
        lambda: f"{rng.randint(1, 999)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}",
        lambda: f"{rng.randint(1990, 2020)}-{rng.randint(2021, 2030)}",
        lambda: str(rng.randint(10_000_000, 99_999_999)),
    ]
    return rng.choice(shapes)()


class TextMaker:
    """Pseudo-English text with a Zipf word distribution."""

    def __init__(self, seed: int, vocabulary: int = 20_000) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        words = COMMON_WORDS.split()
        made = set(words)
        syllables = SYLLABLE_TEXT.split()
        while len(words) < vocabulary:
            word = "".join(self.rng.choice(syllables) for _ in range(self.rng.randint(2, 4)))
            if word not in made:
                made.add(word)
                words.append(word)
        self.words = np.array(words, dtype=object)
        weights = 1.0 / np.arange(1, vocabulary + 1) ** 1.05
        self.probabilities = weights / weights.sum()

    def words_of(self, count: int) -> list[str]:
        return list(self.words[self.np_rng.choice(len(self.words), size=count, p=self.probabilities)])

    def sentences(self, count: int) -> str:
        """About `count` words as capitalized sentences of 6-18 words."""
        words = self.words_of(max(count, 1))
        parts, start = [], 0
        while start < len(words):
            end = min(len(words), start + self.rng.randint(6, 18))
            sentence = " ".join(words[start:end])
            if end - start > 8 and self.rng.random() < 0.3:
                cut = sentence.find(" ", len(sentence) // 2)
                if cut > 0:
                    sentence = sentence[:cut] + "," + sentence[cut:]
            parts.append(sentence[:1].upper() + sentence[1:] + ".")
            start = end
        return " ".join(parts)

    def response(self, count: int) -> str:
        """Prose, sometimes in paragraphs or as a bullet list."""
        shape = self.rng.random()
        if count > 60 and shape < 0.2:
            chunks = self.rng.randint(2, 5)
            return "\n\n".join(self.sentences(count // chunks) for _ in range(chunks))
        if count > 20 and shape < 0.3:
            items = self.rng.randint(3, 8)
            return "\n".join("- " + self.sentences(max(count // items, 3)) for _ in range(items))
        return self.sentences(count)


@dataclass
class Example:
    """One generated input line and its truth."""

    obj: dict[str, Any] | None  # None: `raw` is the line
    truth: dict[str, Any]
    raw: bytes | None = None
    prompt: str = ""
    response: str = ""
    system: str = ""


def as_format(prompt: str, response: str, system: str, rng: random.Random) -> dict[str, Any]:
    shape = rng.random()
    if shape < 0.5:
        obj: dict[str, Any] = {"input": prompt, "output": response}
    elif shape < 0.75:
        obj = {"prompt": prompt, "completion": response}
    else:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if system and rng.random() < 0.5:
            return {"messages": [{"role": "system", "content": system}, *messages]}
        obj = {"messages": messages}
    if system:
        obj["system"] = system
    return obj


def _lengths(rng: random.Random) -> tuple[int, int]:
    prompt = int(min(max(rng.lognormvariate(2.8, 0.8), 3), 400))
    response = int(min(max(rng.lognormvariate(4.0, 1.1), 1), 4000))
    return prompt, response


def _edit(prompt: str, response: str, maker: TextMaker) -> tuple[str, str]:
    """One word replaced, inserted or deleted per 120 words (at least one), anywhere in either part."""
    parts = [prompt.split(" "), response.split(" ")]
    for _ in range(max(1, (len(parts[0]) + len(parts[1])) // 120)):
        position = maker.rng.randrange(len(parts[0]) + len(parts[1]))
        words = parts[0] if position < len(parts[0]) else parts[1]
        position = position if words is parts[0] else position - len(parts[0])
        action = maker.rng.randrange(3)
        if action == 0:
            words[position] = maker.words_of(1)[0]
        elif action == 1:
            words.insert(position, maker.words_of(1)[0])
        elif len(words) > 2:
            del words[position]
    return " ".join(parts[0]), " ".join(parts[1])


def generate(records: int, seed: int) -> list[Example]:
    """`records` input lines with planted problems, shuffled; truth in each Example."""
    maker = TextMaker(seed)
    rng = maker.rng
    shares = {"exact": 0.04, "near": 0.04, "pii": 0.03, "prose": 0.02, "pairs": 0.01}
    shares |= {"low": 0.015, "bad": 0.005}
    counts = {name: int(records * share) for name, share in shares.items()}
    examples: list[Example] = []

    def base_record(min_words: int = 0) -> Example:
        prompt_words, response_words = _lengths(rng)
        response_words = max(response_words, min_words - prompt_words)
        prompt = f"{rng.choice(INSTRUCTIONS)}: {maker.sentences(prompt_words)}"
        response = maker.response(response_words)
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.3 else ""
        return Example(None, {}, prompt=prompt, response=response, system=system)

    copies = 0
    cluster = 0
    while copies < counts["near"]:
        base = base_record(min_words=80)
        base.truth = {"kind": "near_base", "cluster": cluster, "key": f"n{cluster}-0"}
        examples.append(base)
        for member in range(1, min(rng.choice([1, 1, 2]), counts["near"] - copies) + 1):
            if rng.random() < 0.2:
                # Only case and punctuation differ: the words, and so the shingles, are equal.
                prompt, response = base.prompt.upper(), base.response.replace(".", "!").replace(",", ";")
            else:
                prompt, response = _edit(base.prompt, base.response, maker)
            copy = Example(None, {}, prompt=prompt, response=response, system=base.system)
            copy.truth = {"kind": "near_duplicate", "cluster": cluster, "key": f"n{cluster}-{member}"}
            examples.append(copy)
            copies += 1
        cluster += 1

    for index in range(counts["pii"]):
        example = base_record()
        planted = []
        sentences = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            kind = PII_TYPES[(index + len(planted)) % len(PII_TYPES)]
            value = pii_value(kind, rng)
            planted.append({"type": kind, "value": value})
            sentences.append(rng.choice(PII_SENTENCES[kind]).format(value))
        if rng.random() < 0.7:
            example.response = example.response + " " + " ".join(sentences)
        else:
            example.prompt = example.prompt + " " + " ".join(sentences)
        example.truth = {"kind": "pii", "planted": planted, "key": f"p{index}"}
        examples.append(example)

    for index in range(counts["prose"]):
        example = base_record()
        numbers = [prose_number(rng) for _ in range(rng.randint(1, 3))]
        example.response = (
            example.response
            + " "
            + " ".join(
                f"{rng.choice(['On', 'By', 'About', 'Version', 'Price', 'At'])} {number} {maker.sentences(6)}"
                for number in numbers
            )
        )
        example.truth = {"kind": "prose_numbers", "numbers": numbers, "key": f"q{index}"}
        examples.append(example)

    for index in range(counts["pairs"] // 2):
        passage = maker.sentences(rng.randint(20, 40))
        for side in ("a", "b"):
            example = base_record()
            before, after = maker.sentences(rng.randint(40, 120)), maker.sentences(40)
            example.response = f"{before} {passage} {after}"
            example.truth = {"kind": "contaminated", "pair": index, "side": side, "key": f"c{index}{side}"}
            examples.append(example)

    def low_quality(reason: str, index: int) -> tuple[str, str]:
        prompt = f"{maker.sentences(8)} ({index})"  # distinct prompts: none is an exact duplicate
        if reason == "too_many_symbols":
            return prompt, "".join(rng.choice(SYMBOL_SOUP) for _ in range(60)) + " ok"
        if reason == "repeated_lines":
            return prompt, "\n".join([maker.sentences(6)] * 5 + [maker.sentences(6)])
        if reason == "repeated_ngrams":
            return prompt, " ".join([maker.sentences(5)] * 8)
        if reason == "trivial_response":
            return prompt, rng.choice(["...", "?!", "--", "!!!"])
        return prompt, prompt  # copies_prompt

    reasons = ("too_many_symbols", "repeated_lines", "repeated_ngrams", "trivial_response", "copies_prompt")
    for index in range(counts["low"]):
        reason = reasons[index % len(reasons)]
        prompt, response = low_quality(reason, index)
        truth = {"kind": "low_quality", "reason": reason, "key": f"l{index}"}
        examples.append(Example(None, truth, prompt=prompt, response=response))

    malformed: list[tuple[str, Callable[[], bytes]]] = [
        ("malformed_json", lambda: b'{"input": "an unterminated line'),
        ("missing_field", lambda: json.dumps({"input": maker.sentences(5)}).encode()),
        ("wrong_type", lambda: json.dumps({"input": maker.sentences(5), "output": 42}).encode()),
        ("blank_line", lambda: b""),
        ("invalid_utf8", lambda: b'{"input": "caf\xe9", "output": "ok"}'),
        ("not_an_object", lambda: b"[1, 2, 3]"),
    ]
    for index in range(counts["bad"]):
        reason, make = malformed[index % len(malformed)]
        truth = {"kind": "malformed", "reason": reason, "key": f"m{index}"}
        examples.append(Example(None, truth, raw=make()))

    bases = records - len(examples) - counts["exact"]
    first_base = len(examples)
    for index in range(bases):
        example = base_record()
        example.truth = {"kind": "base", "key": f"b{index}"}
        examples.append(example)
    for index in range(counts["exact"]):
        original = examples[first_base + rng.randrange(bases)]
        # Whitespace that normalization removes, and (below) maybe another record format.
        copy = Example(None, {}, prompt="  " + original.prompt + "\r\n", response=original.response + " ")
        copy.system = original.system
        copy.truth = {"kind": "exact_duplicate", "of": original.truth["key"], "key": f"x{index}"}
        examples.append(copy)

    for example in examples:
        if example.raw is None:
            example.obj = as_format(example.prompt, example.response, example.system, rng)
    rng.shuffle(examples)
    return examples


def write(examples: list[Example], out: Path, parts: int) -> list[Path]:
    """The input parts, truth.jsonl and NeMo's flattened copy; returns the input paths."""
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    (out / "nemo").mkdir(parents=True, exist_ok=True)
    size = -(-len(examples) // parts)
    paths = []
    with open(out / "truth.jsonl", "w", encoding="utf-8") as truth:
        for part in range(parts):
            path = out / "inputs" / f"part-{part:02d}.jsonl"
            paths.append(path)
            chunk = examples[part * size : (part + 1) * size]
            with open(path, "wb") as data, open(out / "nemo" / f"part-{part:02d}.jsonl", "w") as nemo:
                for line, example in enumerate(chunk, start=1):
                    raw = example.raw if example.obj is None else json.dumps(example.obj).encode()
                    data.write(raw + b"\n")
                    truth.write(json.dumps({"source": str(path), "line": line, **example.truth}) + "\n")
                    if example.obj is not None:
                        row = {"id": f"{part}:{line}", "text": example.response}
                        nemo.write(json.dumps(row) + "\n")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    paths = write(generate(args.records, args.seed), args.out, args.parts)
    print(f"wrote {args.records} records to {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
