"""Synthetic children's stories: a small English the demo's tiny language model can learn to write.

Real prose (Python's documentation, ablate/data/corpus.py) is too rich for a 1M-parameter model trained on
1M tokens: it reaches a held-out perplexity of ~100 and its greedy completions loop. These stories use a
few hundred words in the register of simple children's stories, and keep their characters, pronouns and
objects consistent from sentence to sentence (a problem met in one sentence is solved in a later one), so
a model that has learnt them completes a prompt with grammatical sentences that follow it, and forgetting
shows as those sentences turning into caption words. Most stories also describe a picture in the captions'
own words and syntax ("Tim drew a small red circle above a large blue square."), as web text holds
captions' language: a language model pretrained on them predicts a caption far better than an untrained
one, as the paper's pretrained LM does (its Fig. 4). Seeded and generated on the fly, so nothing is read
from disk or the network, and each seed gives the same stories on every machine.
"""

from __future__ import annotations

import random

from ablate.data.synthetic import COLOURS, KINDS, POSITIONS, RELATIONS, SIZES, Scene, Shape, caption
from ablate.errors import ConfigError

_GIRLS = ("Lily", "Mia", "Sara", "Anna", "Emma", "Lucy", "Zoe", "Ella", "Amy", "Rose", "Nina", "Kate")
_BOYS = ("Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Dan", "Finn", "Joe", "Paul", "Ned")
_ANIMALS = ("cat", "dog", "bird", "rabbit", "fox", "bear", "duck", "frog", "mouse", "horse", "pig", "owl")
_TRAITS = ("little", "happy", "kind", "shy", "brave", "curious", "clever", "friendly", "gentle", "funny")
_HOMES = (
    "in a small house near the woods",
    "in a big city",
    "in a quiet village",
    "on a farm by the river",
    "in a tree in the park",
    "in a little house by the sea",
    "at the top of a hill",
    "next to a big lake",
)
_LIKES = (
    "play in the garden",
    "read books",
    "sing songs",
    "run in the grass",
    "draw pictures",
    "look at the stars",
    "swim in the lake",
    "climb trees",
    "build towers with blocks",
    "dance in the rain",
    "pick flowers",
    "watch the boats",
)
_OBJECTS = ("ball", "box", "kite", "hat", "book", "cup", "key", "shell", "stone", "drum", "boat", "bell")
# The captions' colours, sizes, shapes and places are among the stories' words (tests/test_stories.py), as
# a web-text LM knows a caption's words before it sees an image.
_LOOKS = (
    "red", "blue", "green", "yellow", "magenta", "cyan", "white", "purple", "orange", "pink",
    "big", "small", "large", "shiny",
)  # fmt: skip
_COLOURS = ("red", "blue", "green", "yellow", "magenta", "cyan", "white")
_SHAPES = ("circle", "square", "triangle", "star", "heart")
_FOUND_AT = (
    "under a tree",
    "in the grass",
    "near the river",
    "behind the house",
    "on the beach",
    "at the park",
    "by the door",
    "in the garden",
    "at the bottom of the garden",
    "in the center of the park",
    "on the left side of the road",
    "on the right side of the road",
    "below the window",
    "above the door",
)
_FEELINGS = ("happy", "excited", "surprised", "glad", "proud")
# (what went wrong, how the friends put it right): a story that raises one resolves the same one.
_PROBLEMS = (
    ("But the {o} was broken.", "Together, they fixed the {o}."),
    ("But the {o} was very dirty.", "Together, they washed the {o} in the river."),
    ("Then the wind blew the {o} into a tall tree.", "{F} used a long stick to get the {o} down."),
    ("But the {o} was too heavy to carry.", "Together, they carried the {o} home."),
    ("Then the {o} rolled down the hill.", "{F} ran after the {o} and caught it."),
    ("But the {o} fell into the water.", "{F} pulled the {o} out with a net."),
)
_ENDINGS = (
    "{N} was very happy and said thank you to {F}.",
    "From that day on, {N} and {F} played with the {o} every day.",
    "{N} learned that friends always help each other.",
    "At the end of the day, {N} went home with a big smile.",
    "{N} and {F} were best friends forever.",
)


def _a(word: str) -> str:
    """The word with its indefinite article."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _character(rng: random.Random, avoid: str = "") -> tuple[str, str, str, str]:
    """(name, what they are, subject pronoun, possessive) of a new character not named `avoid`."""
    girl = rng.random() < 0.5
    name = rng.choice([n for n in (_GIRLS if girl else _BOYS) if n != avoid])
    kind = rng.choice(("girl" if girl else "boy", rng.choice(_ANIMALS)))
    return name, kind, "she" if girl else "he", "her" if girl else "his"


# Sentences that hold a caption of the scene grammar verbatim ({c}), among the story's own.
_PICTURES = (
    "{N} drew {c}.",
    "{N} drew a picture of {c}.",
    "In the picture there was {c}.",
    "{N} painted {c}.",
    "On the wall there was {c}.",
    "The picture showed {c}.",
)


def scene_caption(rng: random.Random) -> str:
    """A caption of the synthetic scene grammar (any colour and kind: web text has every pairing)."""
    if rng.random() < 0.5:
        shape = Shape(rng.choice(KINDS), rng.choice(COLOURS), rng.choice(SIZES), 0, 0)
        return caption(Scene(0, [shape], position=rng.choice(POSITIONS)))
    a, b = rng.sample(COLOURS, 2)  # colours differ within a scene, as in the data
    shapes = [Shape(rng.choice(KINDS), c, rng.choice(SIZES), 0, 0) for c in (a, b)]
    return caption(Scene(0, shapes, relation=rng.choice(RELATIONS)))


def story(rng: random.Random) -> str:
    """One story of 7 to 12 sentences: a character, maybe pictures, a found object, a friend, maybe a
    problem, an end."""
    name, kind, he, his = _character(rng)
    friend, friend_kind, _, _ = _character(rng, avoid=name)
    obj = rng.choice(_OBJECTS)
    look = rng.choice(_LOOKS)
    fill = {"N": name, "F": friend, "o": obj}
    s = [
        rng.choice(
            (
                f"Once upon a time, there was {_a(rng.choice(_TRAITS))} {kind} named {name}.",
                f"{name} was {_a(rng.choice(_TRAITS))} {kind} who lived {rng.choice(_HOMES)}.",
            )
        ),
        f"{he.capitalize()} liked to {rng.choice(_LIKES)}.",
    ]
    if rng.random() < 0.8:
        s += [
            rng.choice(_PICTURES).format(N=name, F=friend, c=scene_caption(rng))
            for _ in range(rng.choice((1, 2)))
        ]
    s += [
        f"One day, {name} found {_a(look)} {obj} {rng.choice(_FOUND_AT)}.",
        f"On the {obj} there was {_a(rng.choice(('small', 'large')))} {rng.choice(_COLOURS)} "
        f"{rng.choice(_SHAPES)}.",
        rng.choice(
            (
                f"{he.capitalize()} was very {rng.choice(_FEELINGS)}.",
                f'"Look at this {obj}!" said {name}.',
                f'"I wonder who lost this {obj}," said {name}.',
            )
        ),
        rng.choice(
            (
                f"{he.capitalize()} ran to show it to {his} friend {friend}.",
                f"{name} took the {obj} to {his} friend {friend}, {_a(rng.choice(_TRAITS))} {friend_kind}.",
            )
        ),
    ]
    if rng.random() < 0.7:
        problem, fix = rng.choice(_PROBLEMS)
        s += [
            problem.format(**fill),
            rng.choice((f"{friend} had an idea.", f"{name} felt sad.")),
            fix.format(**fill),
        ]
    s.append(rng.choice(_ENDINGS).format(**fill))
    return " ".join(s)


def stories(max_chars: int, seed: int = 0) -> list[str]:
    """Stories (one document each) from a seeded generator, at most max_chars characters in all."""
    if max_chars <= 0:
        raise ConfigError("pretrain.corpus_max_chars", max_chars, "a positive integer")
    rng = random.Random(seed)
    out: list[str] = []
    total = 0
    while True:
        s = story(rng)
        if total + len(s) > max_chars:
            return out or [s[:max_chars]]
        out.append(s)
        total += len(s)
