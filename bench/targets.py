"""Targets checked on the figures of one run: met or not, with the ratio that decided it.

Each script states its own targets (issue 13's, for the proxy path and the download); this
module judges them the same way and renders the block printed under a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    target: str  # what was asked, e.g. "gateway >= 2.5x aiohttp-bare requests/s"
    met: bool | None  # None: not judged, a figure it needs was not measured in this run
    detail: str  # the figures that decided it


def ratio_target(
    target: str,
    value: float | None,
    reference: float | None,
    factor: float,
    *,
    unit: str,
    at_most: bool = False,
    fault: str | None = None,
) -> Verdict:
    """value / reference against factor: at least factor, or at most it with at_most.

    A fault (responses that were errors, say) fails the target whatever the ratio: a rate made
    of refusals or a p99 that leaves out timed-out requests would meet it for the wrong reason.
    """
    if value is None or reference is None:
        return Verdict(target, None, "not measured in this run")
    if reference <= 0:
        return Verdict(target, None, f"the reference measured {reference:g} {unit}")
    ratio = value / reference
    met = ratio <= factor if at_most else ratio >= factor
    detail = f"{ratio:.2f}x: {_number(value)} vs {_number(reference)} {unit}"
    if fault:
        return Verdict(target, False, f"{detail}; {fault}")
    return Verdict(target, met, detail)


def limit_target(target: str, value: float | None, limit: float, *, unit: str) -> Verdict:
    """value at most limit."""
    if value is None:
        return Verdict(target, None, "not measured in this run")
    return Verdict(target, value <= limit, f"{value:,.1f} {unit}, limit {limit:,g} {unit}")


def _number(value: float) -> str:
    # Whole numbers where the fraction is noise (requests/s), two decimals where it is not (ms).
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def render_verdicts(title: str, verdicts: Sequence[Verdict]) -> list[str]:
    """Markdown lines: the title, then one bullet a target."""
    words = {True: "met", False: "NOT MET", None: "not judged"}
    return [f"{title}", "", *(f"- {v.target}: **{words[v.met]}** ({v.detail})" for v in verdicts)]
