"""The synthetic story corpus: seeded, bounded, consistent within a story, shares the captions' words."""

from __future__ import annotations

import random
import re

import pytest

from ablate.data import stories as st
from ablate.data.synthetic import grammar_words, parse_caption
from ablate.errors import ConfigError


def test_seeded_and_bounded() -> None:
    a = st.stories(50_000, seed=3)
    assert a == st.stories(50_000, seed=3)
    assert a != st.stories(50_000, seed=4)
    total = sum(map(len, a))
    assert 49_000 < total <= 50_000  # stops before the story that would overflow
    assert st.stories(10, seed=0) == [st.story(random.Random(0))[:10]]
    with pytest.raises(ConfigError, match="corpus_max_chars"):
        st.stories(0)


def test_stories_keep_their_characters_and_object() -> None:
    rng = random.Random(0)
    for _ in range(300):
        text = st.story(rng)
        sentences = re.findall(r"\.(?: |$)", text)  # a quoted line ends at its "said ..."
        assert 7 <= len(sentences) <= 12 and text.endswith(".")
        found = re.search(r"One day, (\w+) found an? (\w+) (\w+)", text)
        assert found, text
        hero, obj = found.group(1), found.group(3)
        assert obj in st._OBJECTS
        assert text.count(hero) >= 2  # introduced, then named again
        # Every later mention of an object is the one found ("the ball", "this ball").
        later = text[found.end() :]
        assert {o for o in st._OBJECTS if re.search(rf"\b(the|this) {o}\b", later)} <= {obj}
        # One pronoun per hero: a girl's story never says "he liked", a boy's never "she liked".
        pronoun = "She" if hero in st._GIRLS else "He"
        other = "He" if pronoun == "She" else "She"
        assert f"{other} liked" not in text


def test_a_problem_is_always_resolved() -> None:
    rng = random.Random(1)
    seen = 0
    for _ in range(300):
        text = st.story(rng)
        for problem, fix in st._PROBLEMS:
            head = problem.split("{o}")[0]
            if head in text and problem.split("{o}")[1] in text:
                seen += 1
                assert fix.split("{o}")[-1] in text, text
    assert 150 < seen < 280  # about 70% of stories have one


def test_articles_and_shared_caption_words() -> None:
    text = " ".join(st.stories(200_000))
    assert " a orange" not in text and " a owl" not in text and "an orange" in text
    words = set(re.findall(r"[a-z]+", text))
    # Every caption word is a story word, so the demo LM knows them before it sees an image.
    assert set(grammar_words()) <= words


def test_pictures_are_described_in_caption_syntax() -> None:
    rng = random.Random(2)
    texts = [st.story(rng) for _ in range(400)]
    heads = sorted((t.split("{c}")[0] for t in st._PICTURES), key=len, reverse=True)  # longest first
    pattern = "|".join(re.escape(h).replace(re.escape("{N}"), r"\w+") for h in heads)
    described = [re.findall(rf"(?:{pattern})(a [a-z ]+)\.", t) for t in texts]
    with_picture = sum(1 for d in described if d)
    assert 0.7 < with_picture / len(texts) < 0.9  # about 80% of stories
    captions = [c for d in described for c in d]
    for c in captions:
        parse_caption(c)  # a caption of the grammar, verbatim (DataError otherwise)
    shapes = [len(parse_caption(c)[0]) for c in captions]
    assert 0.35 < shapes.count(2) / len(shapes) < 0.65  # one- and two-shape captions alike
