"""Timing models on boards: the staging plan (plan), how a board is reached (transport, with
local and ssh), the check of the runner's output (validate), the orchestration (session),
the compute floor and MAC counts (floor), and the latency report (report)."""
