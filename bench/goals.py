# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The goals ``python -m bench tunnel`` checks (issue 14), each figure with its goal and its
ratio to the goal, from one run's results.

Ratios between paths are the median of each round's ratio (two runs made close in time).
"measured / goal" is the figure divided by its goal: at or above 1 passes a goal "at least",
at or below 1 passes a goal "at most".
"""

from __future__ import annotations

import attrs

from bench.costs import hop

GO, SSH = "go", "ssh"
CONNECTION_CPU_US = 200.0  # relay + agent, per new connection
MESSAGE_CPU_US = 15.0  # per 1 KiB message, per process, per direction
WEBSOCKET_RATIO = 0.5  # tunnel over wss:// / over tls://, one stream
HOP_RATIO = 1.0  # CPU the peer hop adds / what the single-node relay spends (issue 9)
HOLD = 10_000
HOLD_KIB = 32


@attrs.frozen
class Goal:
    """One figure against its goal. `passed` is None when the figure was not measured (or, for
    the held connections, not at the goal's size)."""

    figure: str
    measured: str
    goal: str
    to_goal: float | None
    passed: bool | None

    def to_dict(self) -> dict:
        return attrs.asdict(self)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _compare(figure: str, value: float | None, goal: float, at_least: bool, unit: str) -> Goal:
    shown = _x(value) if unit == "x" else "-" if value is None else f"{value:,.1f} {unit}"
    goal_text = f"{'>=' if at_least else '<='} {_x(goal) if unit == 'x' else f'{goal:g} {unit}'}"
    if value is None:
        return Goal(figure, shown, goal_text, None, None)
    return Goal(
        figure, shown, goal_text, value / goal, value >= goal if at_least else value <= goal
    )


def evaluate(results: dict, settings: dict) -> list[Goal]:
    """Every goal whose figure this run could measure, in the issue's order."""
    metrics, costs, bursts, held = (
        results["metrics"],
        results["costs"],
        results["bursts"],
        results["held"],
    )
    labels = {GO: "Go yamux", SSH: "ssh -L"}
    goals = []

    def ratio_goal(key: str, name: str, base: str, goal: float) -> None:
        metric = metrics.get(key)
        if metric is None or base not in metric["ratio_to"]:
            return
        figure = f"{metric['label']}: {name} / {labels.get(base, base)}"
        value = metric["ratio_to"][base].get(name)
        goals.append(_compare(figure, value, goal, metric["higher_is_better"], "x"))

    for key, ssh_goal in (
        ("throughput_1", 1.0),
        ("throughput_n", 1.0),
        ("rtt_p50_us", 1.5),
        ("connections_per_s", None),
        ("pgbench_steady_tps", 0.8),
        ("pgbench_connect_tps", None),
    ):
        ratio_goal(key, "tunnel", GO, 1.0)
        if ssh_goal is not None:
            ratio_goal(key, "tunnel", SSH, ssh_goal)
    if tunnel := costs.get("tunnel"):
        anchor = costs.get(SSH)
        figure = "CPU per new connection, relay + agent"
        if anchor:
            figure += f" (ssh + sshd: {anchor['connection_total_us']:,.0f} us)"
        goals.append(
            _compare(figure, tunnel["connection_total_us"], CONNECTION_CPU_US, False, "us")
        )
        for role in tunnel["carriers"]:
            figure = f"CPU per 1 KiB message per direction, {role}"
            if anchor:
                each = ", ".join(f"{r} {anchor['message_us'][r]:,.1f}" for r in anchor["carriers"])
                figure += f" (ssh -L: {each} us)"
            goals.append(_compare(figure, tunnel["message_us"][role], MESSAGE_CPU_US, False, "us"))
    for name in ("tunnel forward", "tunnel SOCKS", "relay.connect"):
        if (got := bursts.get(name)) is None:
            continue
        figure = f"burst of {settings['burst']:,} at once, {name}: all served, none failed"
        if "error" in got:
            goals.append(Goal(figure, f"failed: {got['error']}", "all", None, False))
            continue
        peak, last = got.get("peak_kib"), got["seconds"]
        measured = (
            f"{got['done']:,} served, {got['failed']:,} failed, {got['unanswered']:,} "
            f"unanswered, {'-' if last is None else f'{last:.1f}'} s, "
            f"peak {'-' if peak is None else f'{peak / 1024:,.0f}'} MiB"
        )
        goals.append(
            Goal(
                figure,
                measured,
                f"{settings['burst']:,}",
                got["done"] / settings["burst"],
                got["done"] == settings["burst"] and got["failed"] == 0,
            )
        )
    ratio_goal("throughput_1", "tunnel-ws", "tunnel", WEBSOCKET_RATIO)
    if tunnel and (peered := costs.get("peered")):
        added = hop(peered, tunnel)
        for kind, what in (
            ("connection_us", "new connection"),
            ("message_us", "1 KiB message"),
            ("gb_cpu_s", "GB"),
        ):
            if kind not in added:
                continue
            goals.append(
                _compare(
                    f"CPU per {what} the peer hop adds (relay A + relay B - one relay; "
                    "issue 9), to one relay's",
                    added[kind]["added"] / added[kind]["one_node"]
                    if added[kind]["one_node"] > 0
                    else None,
                    HOP_RATIO,
                    False,
                    "x",
                )
            )
    if tally := held.get("tunnel"):
        kib = tally["kib_per_connection"]
        at_size = settings["hold"] >= HOLD
        goal = _compare(
            f"{settings['hold']:,} connections held, relay + agent KiB each "
            f"({tally['held']:,} held; the goal is for {HOLD:,})",
            kib,
            HOLD_KIB,
            False,
            "KiB",
        )
        if not at_size or tally["held"] < settings["hold"]:
            goal = attrs.evolve(goal, passed=None if not at_size else False)
        goals.append(goal)
    return goals
