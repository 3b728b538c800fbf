"""`python -m pipeline.core.params`: every params key with its resolved value, what it
means and its rule, as TOML. Apart from params.py so that loading dodo.py (every `doit`)
does not compile it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.core.params import (OVERRIDE_ENV, Params, ParamsError, load_params, rule_of,
                                  sections)


def toml_value(value: Any) -> str:
    """A scalar or list as TOML text (what the reference and the tests' params writer need)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def reference(params: Params) -> str:
    """Every key with its value (defaults, file, override) as TOML, each with what it means
    and its rule as comments: what `python -m pipeline.core.params` prints."""
    lines: list[str] = []
    for name in sections():
        section = getattr(params, name)
        lines.append(f"[{name}]")
        for spec in dataclasses.fields(section):
            rule = rule_of(spec).describe()
            lines.append(f"# {spec.metadata.get('doc', '')}" + (f" Must be {rule}." if rule
                                                                  else ""))
            lines.append(f"{spec.name} = {toml_value(getattr(section, spec.name))}")
        lines.append("")
    for build in params.builds:
        lines.append("[[builds]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in dataclasses.asdict(build).items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    parser = argparse.ArgumentParser(description="Print every params key with its resolved "
                                     "value, what it means and its rule.")
    parser.add_argument("--params", type=Path,
                        default=Path(os.environ.get("PIPELINE_PARAMS", "params.toml")))
    parser.add_argument("--set", default=os.environ.get(OVERRIDE_ENV, ""),
                        help=f"section.key=value;... (default: ${OVERRIDE_ENV})")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.set)
    except ParamsError as exc:
        print(f"error: bad params: {exc}", file=sys.stderr)
        return 2
    print(reference(params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
