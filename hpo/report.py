"""Text of an FDS run's records, shared by the console, TensorBoard and the summary files."""

from __future__ import annotations

from hpo.callbacks import OuterRecord


def format_values(values: dict[str, list[float]], fmt: str = "{:.4g}") -> str:
    """``lr=[0.1 0.2] momentum=[0.5]`` on one line."""
    return " ".join(f"{k}=[{' '.join(fmt.format(x) for x in v)}]" for k, v in values.items())


def divergence_text(r: OuterRecord) -> str:
    """One line saying where an inner run diverged and which values the outer step moved."""
    e = r.extra or {}

    def which(d: dict[str, list[int]]) -> str:
        return ", ".join(f"{n}[{','.join(str(j) for j in js)}]" for n, js in d.items()) or "nothing"

    moved = f"lowered {which(e.get('lowered', {}))}"
    if e.get("raised"):
        moved += f", raised {which(e['raised'])}"
    return (f"DIVERGED: non-finite {e.get('divergence', 'values')} at inner step {e.get('diverged_at', r.steps_run)}"
            f"/{r.horizon}; stopped early, {moved} (safe direction); other values held")
