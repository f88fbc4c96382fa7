"""One check's outcome (``Result``) and the whole run (``Report``): a table or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"  # works, but needs attention soon (e.g. a certificate expiring)
    SKIP = "skip"  # not asked for, or impossible because an earlier step failed


@dataclass(frozen=True, slots=True)
class Result:
    """``name`` is ``<area>.<check>``; ``hint`` says what to do about a fail or warn."""

    name: str
    status: Status
    detail: str
    hint: str = ""


def passed(name: str, detail: str) -> Result:
    return Result(name, Status.PASS, detail)


def failed(name: str, detail: str, hint: str = "") -> Result:
    return Result(name, Status.FAIL, detail, hint)


def warned(name: str, detail: str, hint: str = "") -> Result:
    return Result(name, Status.WARN, detail, hint)


def skipped(name: str, detail: str) -> Result:
    return Result(name, Status.SKIP, detail)


@dataclass(slots=True)
class Report:
    target: str
    results: list[Result] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed (warnings and skips do not fail the run)."""
        return not any(r.status is Status.FAIL for r in self.results)

    def get(self, name: str) -> Result:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for r in self.results if r.status is s) for s in Status}

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "summary": self.counts(),
                "results": [{**asdict(r), "status": r.status.value} for r in self.results]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        width = max((len(r.name) for r in self.results), default=10)
        lines = [f"nova verify {self.target}", ""]
        for r in self.results:
            lines.append(f"  {r.status.value.upper():<4}  {r.name:<{width}}  {r.detail}")
            if r.hint and r.status in (Status.FAIL, Status.WARN):
                lines.append(f"  {'':<4}  {'':<{width}}  -> {r.hint}")
        c = self.counts()
        lines += ["", f"result: {'PASS' if self.ok else 'FAIL'} ({c['pass']} passed, "
                      f"{c['fail']} failed, {c['warn']} warnings, {c['skip']} skipped)"]
        return "\n".join(lines)
