"""Sokoban rooms and rules (pure numpy, no Gymnasium): the generator behind ``paw/Sokoban-v0`` (envs/sokoban.py).

RAGEN-style generation (after gym-sokoban's): carve a floor by a random walk inside a walled square, put
the boxes on their targets and the player on another floor cell (a solved room), then play *backwards*:
the player walks at random and, when a box is right behind it, pulls it along. Every pull is a push
played in reverse, so reversing the walk is a plan that solves the room: every room is solvable, and its
plan comes with it. Of several walks the one that moved the boxes furthest from their targets is kept.
A ``numpy.random.Generator`` drives it all, so a seed gives one room.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DIRECTIONS = ("up", "down", "left", "right")
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}
MIN_SIZE, MAX_SIZE = 5, 12


def max_boxes(size: int) -> int:
    """The most boxes a ``size`` x ``size`` room takes: a quarter of its inside cells."""
    return (size - 2) ** 2 // 4


@dataclass
class Room:
    """One Sokoban state: ``floor`` (size, size) bool, the targets, the boxes and the player (row, column)."""

    floor: np.ndarray
    targets: frozenset
    boxes: frozenset
    player: tuple
    plan: list = field(default_factory=list)  # the moves that solve it (from the generator's reverse play)

    def solved(self) -> bool:
        return self.boxes == self.targets

    def copy(self) -> "Room":
        return Room(self.floor, self.targets, self.boxes, self.player, list(self.plan))


def step(room: Room, direction: str) -> tuple[Room, int]:
    """The room after the player moves one cell (pushing a box ahead of it if the cell behind the box is
    free floor) and the change in boxes on targets (-1, 0, +1). A blocked move leaves the room as it was."""
    dr, dc = MOVES[direction]
    r, c = room.player
    ahead = (r + dr, c + dc)
    if not room.floor[ahead]:
        return room, 0
    if ahead not in room.boxes:
        return Room(room.floor, room.targets, room.boxes, ahead, room.plan), 0
    beyond = (r + 2 * dr, c + 2 * dc)
    if not room.floor[beyond] or beyond in room.boxes:
        return room, 0
    boxes = (room.boxes - {ahead}) | {beyond}
    change = (beyond in room.targets) - (ahead in room.targets)
    return Room(room.floor, room.targets, frozenset(boxes), ahead, room.plan), int(change)


def carve_floor(size: int, rng: np.random.Generator) -> np.ndarray:
    """A connected floor: a random walk of 1.5 x the inside cells that turns with probability 0.35 a step."""
    floor = np.zeros((size, size), dtype=bool)
    r, c = (int(x) for x in rng.integers(1, size - 1, size=2))
    d = MOVES[DIRECTIONS[rng.integers(4)]]
    for _ in range(int(1.5 * (size - 2) ** 2)):
        floor[r, c] = True
        if rng.random() < 0.35:
            d = MOVES[DIRECTIONS[rng.integers(4)]]
        if 1 <= r + d[0] < size - 1 and 1 <= c + d[1] < size - 1:
            r, c = r + d[0], c + d[1]
        else:
            d = MOVES[DIRECTIONS[rng.integers(4)]]
    return floor


def reverse_walk(floor: np.ndarray, targets: frozenset, player: tuple, steps: int, rng: np.random.Generator) -> tuple[Room, int]:
    """Play ``steps`` random reverse moves from the solved room (a box behind the player is pulled with
    probability 0.8); returns the room reached, with the plan that undoes the walk, and how far its boxes
    were moved in all (cells)."""
    boxes, moves, moved = set(targets), [], 0
    for _ in range(steps):
        name = DIRECTIONS[rng.integers(4)]
        dr, dc = MOVES[name]
        ahead, behind = (player[0] + dr, player[1] + dc), (player[0] - dr, player[1] - dc)
        if not floor[ahead] or ahead in boxes:
            continue
        if behind in boxes and rng.random() < 0.8:
            boxes.remove(behind)
            boxes.add(player)
            moved += 1
        moves.append(name)
        player = ahead
    plan = [OPPOSITE[name] for name in reversed(moves)]
    return Room(floor, targets, frozenset(boxes), player, plan), moved


def box_distance(room: Room) -> int:
    """Cells between each box and its nearest target, summed (how far the reverse walk took the boxes)."""
    return sum(min(abs(b[0] - t[0]) + abs(b[1] - t[1]) for t in room.targets) for b in room.boxes)


def shortest_plan(room: Room, max_states: int = 20_000) -> list[str] | None:
    """The fewest moves that solve ``room`` (breadth-first search), or None past ``max_states`` states."""
    start = (room.player, room.boxes)
    parents: dict = {start: None}
    frontier = [room]
    while frontier:
        following = []
        for state in frontier:
            for move in DIRECTIONS:
                nxt, _ = step(state, move)
                key = (nxt.player, nxt.boxes)
                if key in parents:
                    continue
                parents[key] = ((state.player, state.boxes), move)
                if nxt.solved():
                    plan = []
                    while parents[key] is not None:
                        key, move = parents[key]
                        plan.append(move)
                    return plan[::-1]
                following.append(nxt)
        if len(parents) > max_states:
            return None
        frontier = following
    return None


def trim_plan(room: Room) -> list[str]:
    """The plan cut at the first move that solves the room (a reverse walk can pass through solved states)."""
    state, plan = room, []
    for move in room.plan:
        state, _ = step(state, move)
        plan.append(move)
        if state.solved():
            return plan
    raise RuntimeError("the reverse-play plan does not solve its room (a generator bug)")


def generate_room(size: int, num_boxes: int, rng: np.random.Generator, reverse_steps: int = 100, walks: int = 8,
                  layouts: int = 20) -> Room:
    """A solvable ``size`` x ``size`` room with ``num_boxes`` boxes, none solved at the start, and its plan.

    Args:
        size: the room's side, walls included (``MIN_SIZE``..``MAX_SIZE``).
        num_boxes: boxes (and targets), 1..``max_boxes(size)``.
        rng: the generator that decides everything (a seed gives one room).
        reverse_steps: moves of each reverse walk (RAGEN's search depth; more: harder rooms, longer plans).
        walks: reverse walks tried per layout; the one that moved the boxes furthest is kept.
        layouts: floors tried before giving up (a floor too small for the boxes, or no walk moved a box).
    """
    for _ in range(layouts):
        floor = carve_floor(size, rng)
        cells = np.argwhere(floor)
        if len(cells) < num_boxes + 2:
            continue
        picks = rng.choice(len(cells), size=num_boxes + 1, replace=False)
        targets = frozenset(tuple(int(x) for x in cells[i]) for i in picks[:num_boxes])
        player = tuple(int(x) for x in cells[picks[-1]])
        best, best_score = None, 0
        for _ in range(walks):
            room, moved = reverse_walk(floor, targets, player, reverse_steps, rng)
            score = 100 * len(room.boxes - targets) + 10 * box_distance(room) + moved
            if not room.solved() and score > best_score:
                best, best_score = room, score
        if best is not None:
            best.plan = shortest_plan(best) or trim_plan(best)
            return best
    raise RuntimeError(f"no {size}x{size} room with {num_boxes} boxes after {layouts} layouts; try a larger room or fewer boxes")


def render(room: Room) -> str:
    """The room as text, one character a cell (see ``LEGEND``)."""
    rows = []
    for r in range(room.floor.shape[0]):
        line = []
        for c in range(room.floor.shape[1]):
            cell, target = (r, c), (r, c) in room.targets
            if not room.floor[r, c]:
                line.append("#")
            elif cell == room.player:
                line.append("S" if target else "P")
            elif cell in room.boxes:
                line.append("*" if target else "X")
            else:
                line.append("O" if target else "_")
        rows.append("".join(line))
    return "\n".join(rows)


LEGEND = "# wall, _ floor, O target, X box, * box on a target, P you, S you on a target"
