"""The sample instruction dataset shipped with llmft (instructions.jsonl beside this file).

Two small classification tasks a tiny model can learn in a minute on a CPU, written
from word lists so that held-out records are new combinations of known words:
- sentiment of a short review ("positive" / "negative");
- topic of a sentence ("sports", "food", "weather", "music").

The file mixes the three record formats curate accepts and ends with a few deliberately
bad lines (malformed JSON, a missing field, an empty response, an exact duplicate), so the
local run shows what curate keeps and rejects. Regenerate with
`python -m components.sample.dataset` (deterministic).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SAMPLE_PATH = Path(__file__).with_name("instructions.jsonl")

_SUBJECTS = [
    "the soup",
    "the service",
    "the movie",
    "the hotel room",
    "the concert",
    "the book",
    "the coffee",
    "the staff",
    "the ending",
    "the app",
    "the train ride",
    "the museum",
]
_POSITIVE = ["wonderful", "delightful", "excellent", "friendly", "fantastic", "lovely", "superb", "great"]
_NEGATIVE = ["terrible", "awful", "rude", "boring", "disappointing", "dreadful", "cold", "broken"]
_SENTIMENT_QUESTIONS = [
    "Classify the sentiment of this review",
    "Is this review positive or negative",
    "What is the sentiment of this review",
]
_TOPIC_QUESTIONS = [
    "Which topic is this text about",
    "What is the topic of this text",
    "Name the topic of this text",
]
_TOPICS = {
    "sports": [
        "the striker scored a late goal",
        "the team won the final match",
        "the runner broke the record",
        "the coach praised the defense",
        "the referee stopped the game",
        "the goalkeeper saved a penalty",
    ],
    "food": [
        "the chef baked fresh bread",
        "we cooked pasta with garlic",
        "the pie needs more sugar",
        "she sliced the ripe tomatoes",
        "the soup simmered for hours",
        "he grilled fish for dinner",
    ],
    "weather": [
        "heavy rain is expected tonight",
        "the wind blew from the north",
        "snow covered the hills",
        "a storm is moving across the coast",
        "the morning fog slowly lifted",
        "the sun warmed the valley",
    ],
    "music": [
        "the band played a new song",
        "she tuned her old guitar",
        "the choir sang in harmony",
        "the drummer kept a steady beat",
        "the pianist practiced scales",
        "the orchestra rehearsed the symphony",
    ],
}


def _review(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["positive", "negative"])
    words = _POSITIVE if label == "positive" else _NEGATIVE
    first, second = rng.sample(_SUBJECTS, 2)
    text = f"{first} was {rng.choice(words)} and {second} was {rng.choice(words)}."
    return f"{rng.choice(_SENTIMENT_QUESTIONS)}: {text}", label


def _topic(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(sorted(_TOPICS))
    first, second, third = rng.sample(_TOPICS[label], 3)
    return f"{rng.choice(_TOPIC_QUESTIONS)}: {first}, {second} and {third}.", label


def _as_format(index: int, prompt: str, response: str) -> dict:
    """Cycle through the three accepted record formats."""
    match index % 3:
        case 0:
            return {"input": prompt, "output": response}
        case 1:
            return {"prompt": prompt, "completion": response}
        case _:
            return {
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            }


def generate(count: int = 640, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        prompt, response = (_review if index % 2 == 0 else _topic)(rng)
        lines.append(json.dumps(_as_format(index, prompt, response)))
    bad = [
        '{"input": "Classify the sentiment of this review: the app was great',  # cut-off JSON
        json.dumps({"input": "Which topic is this text about: the band played a new song."}),  # no output
        json.dumps(
            {"prompt": "Classify the sentiment of this review: the staff was rude.", "completion": "  "}
        ),
        json.dumps({"text": "an unknown record format"}),
        lines[0],  # exact duplicate of the first record
    ]
    return lines + bad


def main() -> None:
    SAMPLE_PATH.write_text("\n".join(generate()) + "\n", encoding="utf-8")
    print(f"wrote {SAMPLE_PATH}")


if __name__ == "__main__":
    main()
