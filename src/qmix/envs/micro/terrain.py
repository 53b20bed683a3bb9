"""Terrain: walkability grids from ``data/terrain.json`` and the precomputed path tables.

Grids here are numpy ``[32, 32]`` bool arrays indexed ``[x, y]`` (so ``grid[int(x), int(y)]`` is
SMAC's ``pathing_grid[int(x)][int(y)]``); cells are numbered ``x * 32 + y``.

Two movement classes exist: ``ground`` units walk the walkable grid (and so change cliff level
only through ramps, because walkable cells of different levels touch only through ramp cells)
and ``cliff`` units (colossi) may also cross blocked cliff faces of level >= 1.

Ground paths around obstacles come from a table ``via[from_cell, to_cell]``: the farthest cell
of a shortest grid path from ``from_cell`` that is still in straight line of sight; a unit walks
straight at it. ``via == to_cell`` means "walk straight at the goal". Maps whose walkable area
is convex for a movement class need no table (``None``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

SIZE = 32
N_CELLS = SIZE * SIZE


@functools.lru_cache(maxsize=1)
def terrain_data() -> dict:
    """The shipped ``terrain.json`` (see docs/micro.md for its origin)."""
    text = resources.files("qmix.envs.micro").joinpath("data/terrain.json").read_text()
    return json.loads(text)["maps"]


def _rows_to_grid(rows: list[str], true_chars: str) -> np.ndarray:
    # rows[i][j] is cell x = j, y = 31 - i; return [x, y]
    arr = np.array([[c in true_chars for c in row] for row in rows], dtype=bool)  # [y_rev, x]
    return arr[::-1].T.copy()


def _cliff_levels(map_name: str) -> np.ndarray | None:
    rows = terrain_data()[map_name].get("cliff")
    if rows is None:
        return None
    arr = np.array([[-1 if c == "r" else int(c) for c in row] for row in rows])
    return arr[::-1].T.copy()  # [x, y]; -1 = ramp


def raw_walkable(map_name: str) -> np.ndarray:
    """``[32, 32]`` bool ``[x, y]``: the walkable grid exactly as shipped (SMAC's pathing grid)."""
    return _rows_to_grid(terrain_data()[map_name]["walkable"], ".")


@functools.lru_cache(maxsize=None)
def walk_grid(map_name: str, movement: str, seeds: tuple[tuple[float, float], ...]) -> np.ndarray:
    """``[32, 32]`` bool ``[x, y]``: where a unit of this movement class may stand, limited to the
    areas connected to the ``seeds`` points (the spawns), so unreachable ground is ignored."""
    grid = raw_walkable(map_name)
    if movement == "cliff":
        levels = _cliff_levels(map_name)
        if levels is not None:
            inner = np.zeros_like(grid)
            inner[2:-2, 2:-2] = True
            grid = grid | ((levels >= 1) & inner)
    reach = np.zeros_like(grid)
    for x, y in seeds:
        reach[int(x), int(y)] = grid[int(x), int(y)]
    while True:  # 4-connected flood fill
        grown = reach.copy()
        grown[1:] |= reach[:-1]
        grown[:-1] |= reach[1:]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= grid
        if (grown == reach).all():
            break
        reach = grown
    reach.setflags(write=False)
    return reach


def _line_of_sight(grid: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """``[len(sources), N_CELLS]`` bool: the segment between cell centres stays walkable."""
    cells = np.arange(N_CELLS)
    cx, cy = (cells // SIZE + 0.5).astype(np.float32), (cells % SIZE + 0.5).astype(np.float32)
    t = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    los = np.zeros((len(sources), N_CELLS), dtype=bool)
    flat = grid.reshape(-1)
    for start in range(0, len(sources), 64):  # chunks keep memory small
        src = sources[start:start + 64]
        fx, fy = cx[src, None, None], cy[src, None, None]
        px = fx + (cx[None, :, None] - fx) * t
        py = fy + (cy[None, :, None] - fy) * t
        idx = px.astype(np.int64) * SIZE + py.astype(np.int64)
        los[start:start + 64] = flat[idx].all(-1)
    return los


_NEIGHBOURS = [(1, 0, 1.0), (-1, 0, 1.0), (0, 1, 1.0), (0, -1, 1.0),
               (1, 1, 2 ** 0.5), (1, -1, 2 ** 0.5), (-1, 1, 2 ** 0.5), (-1, -1, 2 ** 0.5)]


def _distance_fields(grid: np.ndarray) -> np.ndarray:
    """``[N_CELLS(target), 34, 34]`` geodesic distances (8-connected, no corner cutting), padded."""
    walk = np.zeros((SIZE + 2, SIZE + 2), dtype=bool)
    walk[1:-1, 1:-1] = grid
    dist = np.full((N_CELLS, SIZE + 2, SIZE + 2), np.inf, dtype=np.float32)
    t = np.arange(N_CELLS)
    dist[t, t // SIZE + 1, t % SIZE + 1] = 0.0  # a blocked goal cell is still a source
    # a move from cell c to c + (dx, dy) is allowed when the destination is walkable and, for a
    # diagonal, both side cells are too
    allowed = []
    for dx, dy, _ in _NEIGHBOURS:
        ok = np.zeros_like(walk)
        src = walk[1:-1, 1:-1]
        ok[1:-1, 1:-1] = src  # destination cell (the one we update) must be walkable
        if dx and dy:
            ok[1:-1, 1:-1] &= walk[1 - dx:SIZE + 1 - dx, 1:-1] & walk[1:-1, 1 - dy:SIZE + 1 - dy]
        allowed.append(ok)
    while True:
        changed = False
        for (dx, dy, cost), ok in zip(_NEIGHBOURS, allowed):
            # the cell (x, y) is reached from (x - dx, y - dy)
            shifted = np.full_like(dist, np.inf)
            shifted[:, 1:-1, 1:-1] = dist[:, 1 - dx:SIZE + 1 - dx, 1 - dy:SIZE + 1 - dy] + cost
            better = (shifted < dist) & ok
            if better.any():
                dist[better] = shifted[better]
                changed = True
        if not changed:
            return dist


@functools.lru_cache(maxsize=None)
def path_table(map_name: str, movement: str, seeds: tuple[tuple[float, float], ...]) -> np.ndarray | None:
    """``via[from_cell, to_cell]`` (int16, see module doc) or None when straight lines suffice."""
    grid = walk_grid(map_name, movement, seeds)
    xs, ys = np.nonzero(grid)
    if grid[xs.min():xs.max() + 1, ys.min():ys.max() + 1].all():
        return None  # a rectangle is convex
    walkable = grid.reshape(-1)
    sources = np.nonzero(walkable)[0]
    los_w = _line_of_sight(grid, sources)  # [W, N_CELLS]
    if los_w[:, walkable].all():
        return None
    los = np.ones((N_CELLS, N_CELLS), dtype=bool)  # from a blocked cell: walk straight
    los[sources] = los_w
    dist = _distance_fields(grid)[:, 1:-1, 1:-1].reshape(N_CELLS, N_CELLS)  # [to, cell]
    cells = np.arange(N_CELLS)
    cx, cy = cells // SIZE, cells % SIZE
    # next hop from every cell toward every goal: the neighbour with the smallest remaining path
    best_cost = np.full((N_CELLS, N_CELLS), np.inf, dtype=np.float32)  # [from, to]
    next_hop = np.repeat(cells[None, :], N_CELLS, 0).T.copy()  # default: stay (unreachable)
    for dx, dy, cost in _NEIGHBOURS:
        nx, ny = cx + dx, cy + dy
        inside = (nx >= 0) & (nx < SIZE) & (ny >= 0) & (ny < SIZE)
        ncell = np.where(inside, nx * SIZE + ny, 0)
        ok = inside & np.where(inside, walkable[ncell], False)
        if dx and dy:
            side1 = np.where(inside, walkable[np.clip(nx, 0, SIZE - 1) * SIZE + cy], False)
            side2 = np.where(inside, walkable[cx * SIZE + np.clip(ny, 0, SIZE - 1)], False)
            ok &= side1 & side2
        cand = dist[:, ncell].T + cost  # [from, to]
        # the goal cell itself may be blocked (a colossus standing on a cliff face)
        cand = np.where(ok[:, None] | (ncell[:, None] == cells[None, :]), cand, np.inf)
        better = cand < best_cost
        best_cost = np.where(better, cand, best_cost)
        next_hop = np.where(better, ncell[:, None], next_hop)
    via = next_hop.copy()
    cur = next_hop.copy()
    goal = np.repeat(cells[None, :], N_CELLS, 0)
    for _ in range(2 * SIZE):
        cur = next_hop[cur, goal]
        visible = los[cells[:, None], cur]
        via = np.where(visible, cur, via)
    via = np.where(los, goal, via)  # goal in sight: walk straight at the goal point
    return via.astype(np.int16)


def pack_positions(grid: np.ndarray, centre: tuple[float, float], count: int, spacing: float,
                   taken: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``count`` lattice points nearest to ``centre`` on walkable ground, ``spacing`` apart and
    away from the already ``taken`` points (deterministic)."""
    offsets = np.arange(-12, 13) * spacing
    px, py = np.meshgrid(centre[0] + offsets, centre[1] + offsets, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    ok = np.ones_like(px, dtype=bool)
    for ex, ey in [(0, 0), (0.3, 0), (-0.3, 0), (0, 0.3), (0, -0.3)]:
        ix, iy = np.floor(px + ex).astype(int), np.floor(py + ey).astype(int)
        inside = (ix >= 0) & (ix < SIZE) & (iy >= 0) & (iy < SIZE)
        ok &= inside & grid[np.clip(ix, 0, SIZE - 1), np.clip(iy, 0, SIZE - 1)]
    for tx, ty in taken:
        ok &= (px - tx) ** 2 + (py - ty) ** 2 >= spacing ** 2 - 1e-6
    d = (px - centre[0]) ** 2 + (py - centre[1]) ** 2
    order = np.lexsort((np.arctan2(py - centre[1], px - centre[0]).round(6), d.round(6)))
    order = order[ok[order]][:count]
    if len(order) < count:
        raise ValueError(f"cannot place {count} units around {centre}")  # a bug in the map table
    return [(float(px[i]), float(py[i])) for i in order]
