"""Drawing battles: numpy snapshots of one copy, and a GIF of them (matplotlib + pillow).

matplotlib and pillow are optional (``pip install 'qmix[render]'``) and imported only here.
"""

from __future__ import annotations

import numpy as np

from qmix.envs.micro import terrain
from qmix.errors import missing_package

OUTCOMES = {0: "", 1: "won", 2: "lost", 3: "draw", 4: "timeout"}
MARKERS = {"marine": "o", "marauder": "s", "medivac": "P", "stalker": "^", "zealot": "D",
           "colossus": "*", "hydralisk": "v", "zergling": ".", "baneling": "h", "spine_crawler": "X"}
TEAM_COLOURS = ("tab:blue", "tab:red")


def snapshot(env, index: int) -> dict:
    """Everything needed to draw copy ``index`` of ``env`` now, as numpy arrays."""
    alive = (env.hp[index] > 0).cpu().numpy()
    target = env.target[index].cpu().numpy()
    active = env._last_fire[index].cpu().numpy() & (target >= 0) & alive
    return {
        "map": env.spec.name,
        "pos": env.pos[index].cpu().numpy().copy(),  # [U, 2]
        "health": (env.hp[index] / env.max_hp).cpu().numpy(),
        "shield": (env.shield[index] / env.shield_norm).cpu().numpy() * (env.max_shield > 0).cpu().numpy(),
        "types": [t.name for t in env.unit_types],
        "radius": env.radius.cpu().numpy(),
        "is_enemy": env.is_enemy.cpu().numpy(),
        "is_healer": env.is_healer.cpu().numpy(),
        "alive": alive,
        "lines": [(int(i), int(target[i])) for i in np.nonzero(active)[0]],  # attacker/healer -> target
        "step": int(env.steps[index]),
        "outcome": OUTCOMES[int(env.outcome[index])],
    }


def write_gif(frames: list[dict], path: str, map_name: str, fps: int = 6) -> None:
    """Draw ``frames`` (from :func:`snapshot`) into a GIF at ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from PIL import Image
    except ImportError as error:
        package = "pillow" if "PIL" in str(error) else "matplotlib"
        raise missing_package(package, "render", "rendering") from None
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    grid = terrain.raw_walkable(map_name)  # [x, y]
    images = []
    fig, ax = plt.subplots(figsize=(5, 5), dpi=80)
    for frame in frames:
        ax.clear()
        ax.imshow(~grid.T, origin="lower", extent=(0, 32, 0, 32), cmap="Greys", vmin=0, vmax=2.5)
        pos = frame["pos"]
        for attacker, victim in frame["lines"]:
            colour = "tab:green" if frame["is_healer"][attacker] else TEAM_COLOURS[int(frame["is_enemy"][attacker])]
            ax.plot(*zip(pos[attacker], pos[victim]), color=colour, lw=0.8, alpha=0.7)
        for i, kind in enumerate(frame["types"]):
            if not frame["alive"][i]:
                continue
            x, y = pos[i]
            colour = TEAM_COLOURS[int(frame["is_enemy"][i])]
            ax.scatter([x], [y], marker=MARKERS.get(kind, "o"), s=(frame["radius"][i] * 14) ** 2,
                       c=colour, edgecolors="black", linewidths=0.4, zorder=3)
            w = 1.2
            ax.plot([x - w / 2, x - w / 2 + w * frame["health"][i]], [y + 0.8] * 2, color="limegreen", lw=1.5)
            if frame["shield"][i] > 0:
                ax.plot([x - w / 2, x - w / 2 + w * frame["shield"][i]], [y + 1.0] * 2, color="deepskyblue", lw=1.5)
        title = f"{map_name}  step {frame['step']}"
        if frame["outcome"]:
            title += f"  ({frame['outcome']})"
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 32)
        ax.set_ylim(0, 32)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        images.append(Image.fromarray(rgba[..., :3].copy()))
    plt.close(fig)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
