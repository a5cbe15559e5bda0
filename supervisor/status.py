"""The human "Status" column of `ps`, worded as docker words it."""

import time


def human_duration(seconds: float) -> str:
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if int(minutes) == 1:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _since(stamp: str, now_s: float) -> float:
    # Imported here, not at the top: `corral ps` needs human_duration from
    # this module, and .logs would bring in trio, which costs the CLI ~80 ms.
    from .logs import parse_time_ns

    return max(0.0, now_s - parse_time_ns(stamp) / 1e9)


def human_status(state: dict, now_s: float | None = None) -> str:
    now_s = time.time() if now_s is None else now_s
    status = state["Status"]
    if state.get("Restarting"):
        return f"Restarting ({state['ExitCode']}) {human_duration(_since(state['FinishedAt'], now_s))} ago"
    if status == "running":
        return "Up " + human_duration(_since(state["StartedAt"], now_s))
    if status == "exited":
        ago = human_duration(_since(state["FinishedAt"], now_s))
        return f"Exited ({state['ExitCode']}) {ago} ago"
    if status == "removing":
        return "Removal In Progress"
    if status == "dead":
        return "Dead"
    return "Created"
