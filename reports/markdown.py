"""Markdown pieces shared by the report's sections: tables from rows of cells, footnotes naming run ids."""

from __future__ import annotations


class Footnotes:
    """Each cell's MLflow run ids, as numbered footnotes (every id is a row of runs.csv beside the report)."""

    def __init__(self):
        self.notes: list[str] = []

    def add(self, run_ids) -> str:
        self.notes.append("runs: " + ", ".join(f"`{r}`" for r in run_ids))
        return f"[^{len(self.notes)}]"

    def render(self) -> str:
        return "\n".join(f"[^{i + 1}]: {n}" for i, n in enumerate(self.notes))


def table(header: list[str], rows: list[list]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    )


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]
