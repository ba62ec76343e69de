"""The multitask instruction corpus the embedded model is pretrained on.

bloomz learned many tasks, each selected by a natural-language instruction placed before the input;
a soft prompt then learns to play the role of such an instruction. The embedded model is trained the
same way in miniature: every example is ``instruction + "Tweet text : {text} Label : "`` followed by
the task's answer and EOS, and five tasks share that label slot:

========== ===================================================== =================================
task       canonical instruction                                 answers
========== ===================================================== =================================
complaint  Classify if the tweet is a complaint or no complaint. complaint, no complaint
sentiment  Classify the sentiment of the tweet as positive, ...  positive, negative, neutral
topic      Classify the topic of the tweet.                      airline, bank, ..., other
company    Which company is the tweet addressed to?              skylink, novabank, ..., none
question   Is the tweet a question or a statement?               question, statement
========== ===================================================== =================================

Instructions come in several wordings, sometimes lower-cased or cut short after their key word, so
that the model keys on what an instruction says rather than on one exact string. Some examples come
with no instruction at all (the bare template) and then answer a task drawn at random: without an
instruction or a soft prompt, the model cannot know that the complaint task is meant.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from softprompt_hf.embedded import COMPLAINT_INSTRUCTION
from softprompt_hf.embedded.tweets import Tweet, TweetGenerator

__all__ = [
    "BARE_TASK_WEIGHTS",
    "TASKS",
    "TEMPLATE",
    "Example",
    "Task",
    "iter_examples",
]

#: The seed guide's template: the model reads the label right after ``"Label : "``.
TEMPLATE = "Tweet text : {text} Label : "


@dataclass(frozen=True)
class Task:
    """One task of the corpus: its instructions (canonical first), key word and answer."""

    name: str
    instructions: tuple[str, ...]
    keyword: str  # a shortened instruction always keeps the words up to this one
    answer: Callable[[Tweet], str]


TASKS: dict[str, Task] = {
    "complaint": Task(
        name="complaint",
        instructions=(
            COMPLAINT_INSTRUCTION,
            "Is this tweet a complaint? Answer complaint or no complaint.\n",
            "Decide whether the customer tweet is a complaint or no complaint.\n",
            "Label the tweet as complaint or no complaint.\n",
            "Complaint detection: is the tweet a complaint or no complaint?\n",
        ),
        keyword="complaint",
        answer=lambda t: "complaint" if t.complaint else "no complaint",
    ),
    "sentiment": Task(
        name="sentiment",
        instructions=(
            "Classify the sentiment of the tweet as positive, negative or neutral.\n",
            "What is the sentiment of this tweet? positive, negative or neutral.\n",
            "Is the tweet positive, negative or neutral?\n",
            "Sentiment analysis of the tweet.\n",
        ),
        keyword="sentiment|positive",
        answer=lambda t: t.sentiment,
    ),
    "topic": Task(
        name="topic",
        instructions=(
            "Classify the topic of the tweet.\n",
            "What is this tweet about? Give the topic.\n",
            "Which industry is the tweet about?\n",
            "Topic of the tweet:\n",
        ),
        keyword="topic|industry",
        answer=lambda t: t.topic,
    ),
    "company": Task(
        name="company",
        instructions=(
            "Which company is the tweet addressed to?\n",
            "Name the company mentioned in the tweet.\n",
            "Extract the company from the tweet.\n",
        ),
        keyword="company",
        answer=lambda t: t.company,
    ),
    "question": Task(
        name="question",
        instructions=(
            "Is the tweet a question or a statement?\n",
            "Does the tweet ask a question? Answer question or statement.\n",
            "Question or statement?\n",
        ),
        keyword="question",
        answer=lambda t: "question" if t.question else "statement",
    ),
}

#: How often each task is drawn for an instructed example.
TASK_WEIGHTS = {"complaint": 0.25, "sentiment": 0.15, "topic": 0.2, "company": 0.2, "question": 0.2}
#: Which task a bare-template example (no instruction) answers.
BARE_TASK_WEIGHTS = {"complaint": 0.1, "sentiment": 0.3, "topic": 0.2, "company": 0.2, "question": 0.2}


@dataclass(frozen=True)
class Example:
    """One corpus example: the model reads ``prompt`` and must answer ``answer`` then EOS."""

    task: str
    prompt: str
    answer: str
    instructed: bool


def _vary(instruction: str, keyword: str, rng: random.Random) -> str:
    """Randomly lower-cases, un-newlines or shortens an instruction (never before its key word)."""
    if rng.random() < 0.2:
        words = instruction.split()
        keys = keyword.split("|")
        first = next(
            (i for i, w in enumerate(words) if any(k in w.lower() for k in keys)),
            len(words) - 1,
        )
        instruction = " ".join(words[: rng.randint(first + 1, len(words))]) + rng.choice(("\n", " ", "\n"))
    if rng.random() < 0.1:
        instruction = instruction.lower()
    if rng.random() < 0.1:
        instruction = instruction.rstrip("\n") + " "
    return instruction


def iter_examples(seed: int, p_bare: float = 0.15, exclude: frozenset[str] = frozenset()) -> Iterator[Example]:
    """Yields an endless, seeded stream of corpus examples over fresh tweets.

    Args:
        seed: Seed of both the tweets and the task draws.
        p_bare: Fraction of examples without instruction.
        exclude: Tweet texts never to use (the shipped dataset, so that it stays held out).
    """
    rng = random.Random(seed)
    gen = TweetGenerator(seed + 1)
    names = list(TASK_WEIGHTS)
    bare_names = list(BARE_TASK_WEIGHTS)
    while True:
        tweet = gen.tweet()
        if tweet.text in exclude:
            continue
        prompt = TEMPLATE.format(text=tweet.text)
        if rng.random() < p_bare:
            task = TASKS[rng.choices(bare_names, weights=list(BARE_TASK_WEIGHTS.values()))[0]]
            yield Example(task.name, prompt, task.answer(tweet), instructed=False)
            continue
        task = TASKS[rng.choices(names, weights=list(TASK_WEIGHTS.values()))[0]]
        instruction = task.instructions[0] if rng.random() < 0.4 else rng.choice(task.instructions)
        instruction = _vary(instruction, task.keyword, rng)
        yield Example(task.name, instruction + prompt, task.answer(tweet), instructed=True)
