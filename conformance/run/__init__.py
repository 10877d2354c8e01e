"""Code that drives test jobs from outside: one process, never inside an MPI rank.

The runner (``python -m conformance run``), the launcher (finds and starts ``mpiexec``), reports,
known deviations and the selftest. It talks to the ranks only through the job's command line,
its exit status, its output and the results file (``conformance.records``).
"""
