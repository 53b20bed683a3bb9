"""Inspecting learned values: the Q_tot tables of the two-step game (QMIX paper, Table 1)."""

from __future__ import annotations

import torch



@torch.no_grad()
def two_step_tables(cfg, agent, mixer) -> dict[str, list[list[float]]]:
    """Q_tot for every joint action in state 1, 2A and 2B of ``matrix:two-step``.

    Step-2 values are computed along the history that reaches that state (agent 0 played A for
    2A, B for 2B; agent 1 played its greedy step-1 action), as the agents would see it.
    Rows are agent 0's action, columns agent 1's. With no mixer (IQL) the sum is shown.
    """
    eye = torch.eye(3)
    device = next(agent.parameters()).device

    def q_tot(state_vec, qs):  # qs [4, 2] chosen utilities for the 4 joint actions
        if mixer is None:
            return qs.sum(-1)
        return mixer(qs, state_vec.expand(4, -1))

    joint = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=device)
    s1 = eye[0].to(device)
    obs1 = s1.expand(1, 1, 2, 3)  # [B=1, T=1, n, obs]
    q1 = agent.forward_seq(obs1, torch.full((1, 1, 2), -1, device=device))[0, 0]  # [n, A]
    tables = {"state 1": q_tot(s1.view(1, 3), torch.stack([q1[0, joint[:, 0]], q1[1, joint[:, 1]]], -1))}
    greedy1 = int(q1[1].argmax())
    for name, a0 in (("state 2A", 0), ("state 2B", 1)):
        s2 = eye[1 + a0].to(device)
        obs = torch.stack([s1, s2]).view(1, 2, 1, 3).expand(1, 2, 2, 3)
        last = torch.tensor([[[-1, -1], [a0, greedy1]]], device=device)
        q2 = agent.forward_seq(obs, last)[0, 1]  # [n, A]
        tables[name] = q_tot(s2.view(1, 3), torch.stack([q2[0, joint[:, 0]], q2[1, joint[:, 1]]], -1))
    return {k: v.view(2, 2).tolist() for k, v in tables.items()}


def format_table(name: str, table: list[list[float]]) -> str:
    rows = [f"{name:>9}     A       B"]
    for label, row in zip("AB", table):
        rows.append(f"{label:>9} {row[0]:7.2f} {row[1]:7.2f}")
    return "\n".join(rows)
