"""The multitask instruction corpus the embedded model is pretrained on.

bloomz learned many tasks, each selected by a natural-language instruction placed before the input;
a soft prompt then learns to play the role of such an instruction. The embedded model is trained the
same way in miniature: every example is ``instruction + "Tweet text : {text} Label : "`` followed by
the task's answer and EOS, and six tasks share that slot, five with a label for answer and one with
free text:

========== ===================================================== =================================
task       canonical instruction                                 answers
========== ===================================================== =================================
complaint  Classify if the tweet is a complaint or no complaint. complaint, no complaint
sentiment  Classify the sentiment of the tweet as positive, ...  positive, negative, neutral
topic      Classify the topic of the tweet.                      airline, bank, ..., other
company    Which company is the tweet addressed to?              skylink, novabank, ..., none
question   Is the tweet a question or a statement?               question, statement
describe   Describe the tweet in a few words.                    angry complaint to skylink about
                                                                 flights, ... (:func:`describe`)
========== ===================================================== =================================

Instructions come in several wordings, sometimes lower-cased or cut short after their key word, so
that the model keys on what an instruction says rather than on one exact string. Some examples come
with no instruction at all (the bare template) and then answer a task drawn at random: without an
instruction or a soft prompt, the model cannot know that the complaint task is meant. They never
answer the describe task: its answers stay out of the bare template's reach, so a soft prompt that
learns the task starts from outputs that share little with its references.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from softprompt_hf.embedded import COMPLAINT_INSTRUCTION, DESCRIBE_INSTRUCTION
from softprompt_hf.embedded.tweets import Tweet, TweetGenerator

__all__ = [
    "BARE_TASK_WEIGHTS",
    "TASKS",
    "TASK_WEIGHTS",
    "TEMPLATE",
    "TOPIC_PHRASES",
    "Example",
    "Task",
    "describe",
    "iter_examples",
]

#: The seed guide's template: the model reads the label right after ``"Label : "``.
TEMPLATE = "Tweet text : {text} Label : "


#: What ``describe`` calls each topic: words of their own, so that a wrong topic costs its words.
TOPIC_PHRASES = {
    "airline": "flights",
    "telecom": "phone and internet",
    "bank": "banking",
    "delivery": "parcels",
    "shopping": "online shopping",
    "streaming": "streaming",
    "food": "food orders",
    "rail": "trains",
    "energy": "energy bills",
    "electronics": "gadgets",
}
_MOODS = {"negative": "sad", "positive": "happy", "neutral": "neutral"}


def describe(tweet: Tweet) -> str:
    """The describe task's answer: a few words on the tweet's tone, kind, company and topic.

    ``"angry complaint to skylink about flights"``, ``"polite complaint to novabank about banking"``,
    ``"happy praise for boxly about parcels"``, ``"neutral question to vidora about streaming"`` (a ``remark``
    when it asks nothing), ``"sad personal tweet with no company"``. Of a company tweet's six to eight words,
    all but the connecting ones ("to", "for", "about", "and") name what the generator knows about it, so an
    answer about another tweet shares few of them.
    """
    if tweet.kind == "personal":
        return f"{_MOODS[tweet.sentiment]} personal tweet with no company"
    about = f"{tweet.company} about {TOPIC_PHRASES[tweet.topic]}"
    if tweet.kind == "complaint":
        return f"{'polite' if tweet.polite else 'angry'} complaint to {about}"
    if tweet.kind == "praise":
        return f"happy praise for {about}"
    return f"neutral {'question' if tweet.question else 'remark'} to {about}"


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
    "describe": Task(
        name="describe",
        instructions=(
            DESCRIBE_INSTRUCTION,
            "Write a short description of the tweet.\n",
            "Describe this tweet: its tone, kind, company and topic.\n",
            "In a few words, describe what kind of tweet this is and who it is for.\n",
            "Tweet description:\n",
        ),
        keyword="describe|description",
        answer=describe,
    ),
}

#: How often each task is drawn for an instructed example.
TASK_WEIGHTS = {
    "complaint": 0.22,
    "sentiment": 0.12,
    "topic": 0.14,
    "company": 0.14,
    "question": 0.13,
    "describe": 0.25,
}
#: Which task a bare-template example (no instruction) answers: never the describe task (see the module docstring).
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
