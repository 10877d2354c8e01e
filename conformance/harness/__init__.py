"""Code that runs inside every rank of a test job: the pytest plugin and what it needs.

The plugin (entry point ``pytest11``), the control plane between ranks, collective outcomes and
assertions, the watchdog, per-rank logs, lockstep Hypothesis, spec levels and run info. Nothing
here launches processes; ``conformance.run`` drives the jobs these modules live in.
"""
