"""What the CLI shows of containers as docker words it: the "Status" column of
`ps`, and the CPU and memory figures of `stats`."""

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
        up = "Up " + human_duration(_since(state["StartedAt"], now_s))
        # As Docker shows it: "Up 5 minutes (healthy)", "(health: starting)".
        health = (state.get("Health") or {}).get("Status")
        if health == "starting":
            return f"{up} (health: starting)"
        return f"{up} ({health})" if health in ("healthy", "unhealthy") else up
    if status == "exited":
        ago = human_duration(_since(state["FinishedAt"], now_s))
        return f"Exited ({state['ExitCode']}) {ago} ago"
    if status == "removing":
        return "Removal In Progress"
    if status == "dead":
        return "Dead"
    return "Created"


# ---- stats, as the docker CLI computes them from a stats document -----------


def cpu_percent(doc: dict) -> float:
    """CPU % as the docker CLI computes it from one stats document."""
    cpu, pre = doc["cpu_stats"], doc["precpu_stats"]
    used = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    system = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    if used <= 0 or system <= 0:
        return 0.0
    return used / system * (cpu.get("online_cpus") or 1) * 100.0


def memory_used_bytes(doc: dict) -> int:
    """Memory use as the docker CLI shows it: usage minus inactive file."""
    memory = doc["memory_stats"]
    stats = memory.get("stats") or {}
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return max(0, memory.get("usage", 0) - inactive)
