"""`python -m pipeline.nightly`: regenerate everything, keep a history (SQLite), gate, report.
run (the command), lock, provenance, retention, history, report (nightly.md), charts."""
