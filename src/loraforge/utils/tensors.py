"""NaN / Inf detection in a state dict: the one test every reader and writer of LoRA files (and the checker) uses."""

from __future__ import annotations


def nonfinite_tensors(sd) -> dict[str, str]:
    """key -> "12 NaN, 3 Inf of 64 values" for every floating-point tensor holding NaN or ±Inf (a diverged run's
    file turns each weight it touches into NaN)."""
    out: dict[str, str] = {}
    for key, value in sd.items():
        if not hasattr(value, "is_floating_point") or not value.is_floating_point() or bool(value.isfinite().all()):
            continue
        counts = [f"{int(n)} {what}" for n, what in ((value.isnan().sum(), "NaN"), (value.isinf().sum(), "Inf")) if n]
        out[key] = f"{', '.join(counts)} of {value.numel()} values"
    return out


def describe_nonfinite(bad: dict[str, str], limit: int = 5) -> str:
    """`nonfinite_tensors`' result in one phrase: the first `limit` tensors, then a count of the others."""
    shown = "; ".join(f"{key} ({what})" for key, what in list(bad.items())[:limit])
    return shown + (f" (+{len(bad) - limit} more)" if len(bad) > limit else "")
