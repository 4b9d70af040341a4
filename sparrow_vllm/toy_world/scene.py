"""Scenes of the toy video world and their question/answer text.

A scene is 1-3 events, one after another: in event k a large coloured shape appears and
moves in one direction; a digit is shown at the left edge throughout. Every answer
depends on the frames: the count, colours, kinds, order of events, directions and the
digit. Shapes are large (a third of the frame) so a small target learns to see them in
minutes on a CPU. Scenes are a pure
function of (seed, index), so a dataset is reproducible from its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 215, 40)}
KINDS = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ORDINALS = ("first", "then", "finally")

QUESTIONS = {
    "describe": "describe the video .",
    "count": "how many shapes are there ?",
    "number": "what is the number ?",
    "first": "which shape appears first ?",
}

# Every word the questions, answers and chat template use: one token each.
WORDS = sorted(
    set(
        " ".join(QUESTIONS.values()).split()
        + list(COLOURS) + list(KINDS) + list(DIRECTIONS) + list(NUMBER_WORDS) + list(ORDINALS)
        + "there is are a shape shapes appears and moves the number user assistant system".split()
    )
)


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    direction: str
    start: tuple[float, float]  # (x, y) of the centre, as a fraction of the shape area
    appear: float  # time it appears, as a fraction of the video
    vanish: float  # time it is gone


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]  # in order of appearance
    digit: int

    def answer(self, question: str) -> str:
        """The reference answer to one of QUESTIONS' keys."""
        count = f"{NUMBER_WORDS[len(self.shapes)]} shape{'s' if len(self.shapes) > 1 else ''}"
        first = self.shapes[0]
        if question == "count":
            return f"there {'are' if len(self.shapes) > 1 else 'is'} {count} ."
        if question == "number":
            return f"the number is {NUMBER_WORDS[self.digit]} ."
        if question == "first":
            return f"the {first.colour} {first.kind} appears first ."
        if question == "describe":
            parts = [f"there {'are' if len(self.shapes) > 1 else 'is'} {count} ."]
            for i, shape in enumerate(self.shapes):
                ordinal = ORDINALS[-1] if i == len(self.shapes) - 1 and i > 0 else ORDINALS[i]
                parts.append(
                    f"{ordinal} a {shape.colour} {shape.kind} appears and moves {shape.direction} ."
                )
            parts.append(f"the number is {NUMBER_WORDS[self.digit]} .")
            return " ".join(parts)
        raise ValueError(f"unknown question {question!r}; use one of {sorted(QUESTIONS)}")


def _start_for(direction: str, rng: random.Random) -> tuple[float, float]:
    """A start (fractions of the shape area) that leaves room to travel in `direction`."""
    near, across = rng.uniform(0.25, 0.3), rng.uniform(0.3, 0.7)
    if direction == "left":
        return 1.0 - near, across
    if direction == "right":
        return near, across
    if direction == "up":
        return across, 1.0 - near
    return across, near


def sample_scene(seed: int, index: int) -> Scene:
    rng = random.Random(seed * 1_000_003 + index)
    n = rng.randint(1, 3)
    colours = rng.sample(list(COLOURS), n)
    shapes = []
    for i, colour in enumerate(colours):
        direction = rng.choice(DIRECTIONS)
        shapes.append(
            Shape(
                colour=colour,
                kind=rng.choice(KINDS),
                direction=direction,
                start=_start_for(direction, rng),
                appear=i / n,
                vanish=(i + 1) / n,
            )
        )
    return Scene(shapes=tuple(shapes), digit=rng.randrange(10))
