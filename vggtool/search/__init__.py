"""`vggtool search`: the fastest chain of recipes within an accuracy budget, on measured latency.

`names` holds what the command line offers (light: `vggtool --help` imports no torch), `space` what is explored,
`engine` how (stages, the log a rerun resumes from, the choice), `measure` measures a run's variants, and `run`
(`search_run`) ties them to a run and writes the search folder. Names are imported from here lazily.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "OBJECTIVES": "names", "RUNTIMES": "names", "Candidate": "space", "Request": "space", "SearchSpace": "space",
    "check_request": "space", "default_runtimes": "space", "Log": "engine", "Search": "engine",
    "SEARCH_LOG": "engine", "SEARCH_DIR": "run", "SUMMARY": "run", "search_run": "run", "searched": "run",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = sorted(_WHERE)
