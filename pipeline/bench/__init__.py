"""Timing models on boards: staging and pushing (session), the compute floor and MAC counts
(floor), and the latency report (report)."""
