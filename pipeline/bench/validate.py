"""Checking the runner's document against the plan: every planned case exactly once, with
the expected fields and types; what the board has no runtime for is set apart."""

from __future__ import annotations

from typing import Any

from pipeline.bench.transport import BoardError
from pipeline.core.formats import NO_RUNTIME_MARK
from pipeline.core.text import clean_text


# What a good case must carry, and the types it must have.
CASE_FIELDS = {"init_ms": float, "first_us": float, "mean_us": float, "std_us": float,
               "min_us": float, "max_us": float, "p10_us": float, "p50_us": float,
               "p90_us": float, "p99_us": float, "runs": int, "peak_rss_mb": float,
               "model_rss_mb": float, "cpus": list}
SAMPLE_FIELDS = {"samples": int, "accuracy": float, "agreement": float, "disagreements": list}


def _has_type(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def _good_pair(pair: Any) -> bool:
    return isinstance(pair, dict) and all(
        isinstance(pair.get(k), list) and pair[k] and all(_has_type(v, float) for v in pair[k])
        for k in ("candidate_us", "reference_us"))


def check_document(document: Any, plan: dict[str, Any]
                   ) -> tuple[list[dict], list[dict], list[str], list[dict]]:
    """Match the runner's document against the plan: (good results, good peak, problems,
    missing), `missing` being the model cases the board has no runtime for.

    Every planned file x threads case must come back exactly once with the expected fields
    and types; anything else is a problem naming the case. A document without the expected
    shape at all raises BoardError.
    """
    if not isinstance(document, dict):
        raise BoardError(f"the runner's document is a {type(document).__name__}, not an object")
    for key, kind in (("machine", dict), ("runtimes", dict), ("results", list)):
        if not isinstance(document.get(key), kind):
            raise BoardError(f"the runner's document has no {key!r} {kind.__name__}")
    good: dict[str, list[dict]] = {"models": [], "peak": []}
    problems, missing = [], []
    for kind in ("models", "peak"):
        planned = {(m["file"], t) for m in plan[kind] for t in plan["threads"]}
        seen: set[tuple[str, int]] = set()
        received = document.get("results" if kind == "models" else "peak") or []
        for r in received if isinstance(received, list) else []:
            case = (r.get("model"), r.get("threads")) if isinstance(r, dict) else (None, None)
            label = f"{case[0]} x{case[1]}"
            if case not in planned:
                problems.append(f"{label}: not in the plan")
                continue
            if case in seen:
                problems.append(f"{label}: reported twice")
                continue
            seen.add(case)
            if "error" in r and str(r["error"]).startswith(NO_RUNTIME_MARK):
                if kind == "models":  # a missing peak twin only leaves that floor unmeasured
                    missing.append({"model": case[0], "threads": case[1],
                                    "error": clean_text(str(r["error"]))})
                continue
            if "error" in r:
                problems.append(f"{label}: {clean_text(str(r['error']))}")
                continue
            fields = {**CASE_FIELDS, **(SAMPLE_FIELDS if kind == "models" else {})}
            bad = [k for k, t in fields.items() if not _has_type(r.get(k), t)]
            if bad:
                problems.append(f"{label}: missing or mistyped {', '.join(bad)}")
                continue
            if "pair" in r and not _good_pair(r["pair"]):  # the timing stands, not the pair
                del r["pair"]
                r["pair_skipped"] = "reference not compared: the runner's round medians " \
                    "are missing or not numbers"
            good[kind].append(r)
        problems += [f"{f} x{t}: missing from the runner's results"
                     for f, t in sorted(planned - seen)]
    return good["models"], good["peak"], problems, missing
