"""The result of a consumer-compatibility check (`formats.check`, `formats.flux_check`): per consumer, what it loads,
skips and mis-merges, and the file's issues."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..adapters import ADAPTER_LABELS

CONSUMERS = ("comfyui", "a1111", "diffusers")


@dataclass
class Issue:
    severity: str  # "error" (the file is broken for some consumer) or "warning"
    code: str
    message: str
    keys: list[str] = field(default_factory=list)  # file keys, or module names for module-level issues

    def __str__(self) -> str:
        names = f": {', '.join(self.keys[:8])}" + (f" (+{len(self.keys) - 8} more)" if len(self.keys) > 8 else "")
        return f"[{self.code}] {self.message}{names if self.keys else ''}"


@dataclass
class ConsumerReport:
    consumer: str  # ComfyUI / A1111 / diffusers
    version: str
    loads: bool  # False: the consumer refuses the whole file
    applied: int  # modules whose weight the consumer changes
    total: int  # adapter modules in the file
    unmatched: list[str] = field(default_factory=list)  # keys that reach no layer
    skipped: dict[str, str] = field(default_factory=dict)  # module -> why it is matched but not applied
    wrong: dict[str, str] = field(default_factory=dict)  # module -> why the consumer's weight is not the trained one
    reason: str | None = None  # why the file is refused
    detail: str | None = None  # the consumer's own error message, when it differs from `reason`

    def short(self) -> str:
        if self.consumer == "diffusers":
            if not self.loads:
                return f"diffusers: {self.reason}"
            extra = "" if self.applied == self.total else f" {self.applied}/{self.total} modules"
            return "diffusers loads" + extra + (" (DoRA as plain LoRA)" if self.wrong else "")
        if not self.loads:
            return f"{self.consumer}: fails to load ({self.reason})"
        wrong = f" ({len(self.wrong)} mis-merged)" if self.wrong else ""
        return f"{self.consumer} {self.applied}/{self.total}{wrong}"

    def lines(self, limit: int = 50) -> list[str]:
        head = f"{self.consumer} {self.version}: "
        if not self.loads:
            out = [head + f"does not load the file: {self.reason}"]
            if self.detail and self.detail != self.reason:
                out.append(f"  {self.detail}")
        else:
            out = [head + f"{self.applied}/{self.total} modules applied"]
        if self.unmatched:
            shown = ", ".join(self.unmatched[:limit])
            more = f" (+{len(self.unmatched) - limit} more)" if len(self.unmatched) > limit else ""
            out.append(f"  unmatched keys ({len(self.unmatched)}): {shown}{more}")
        for title, items in (("not applied", self.skipped), ("mis-merged", self.wrong)):
            by_reason: dict[str, list[str]] = {}
            for module, why in items.items():
                by_reason.setdefault(why, []).append(module)
            for why, mods in by_reason.items():
                shown = ", ".join(sorted(mods)[:8]) + (f" (+{len(mods) - 8} more)" if len(mods) > 8 else "")
                out.append(f"  {title} ({len(mods)}): {why}: {shown}")
        return out


@dataclass
class CheckReport:
    family: str
    family_evidence: str
    modules: dict[str, str]  # module -> adapter kind
    consumers: dict[str, ConsumerReport]
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def broken(self) -> bool:
        return bool(self.errors)

    def issue(self, code: str) -> Issue | None:
        return next((i for i in self.issues if i.code == code), None)

    def summary(self) -> str:
        c, a, d = (self.consumers[k] for k in CONSUMERS)
        first = f"{c.consumer} {c.applied}/{c.total} modules" if c.loads else c.short()
        if c.loads and c.wrong:
            first += f" ({len(c.wrong)} mis-merged)"
        line = ", ".join([first, a.short(), d.short()])
        broken = self.issue("non-finite")
        return f"BROKEN: NaN/Inf values in {len(broken.keys)} tensors; {line}" if broken else line

    def __str__(self) -> str:
        kinds = adapters_in_names(self.modules)
        out = [f"family: {self.family} ({self.family_evidence})", f"modules: {len(self.modules)} ({kinds})"]
        for key in CONSUMERS:
            out += self.consumers[key].lines()
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                out.append(f"{title}:")
                out += [f"  {i}" for i in items]
        return "\n".join(out)


def adapters_in_names(modules: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for kind in modules.values():
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{ADAPTER_LABELS.get(k, k)} {n}" for k, n in sorted(counts.items()))
