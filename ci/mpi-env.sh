# Source this file (". ci/mpi-env.sh") before running MPI jobs on a small machine: a CI runner,
# a container or a laptop with fewer cores than ranks. It only sets what is unset, so a user's
# own settings win. The conformance runner applies the yield settings itself when ranks
# outnumber cores; this file is for everything else (plain mpiexec runs, tox, CI).

_conformance_default() {
    # _conformance_default NAME VALUE: export NAME=VALUE unless NAME is already set.
    eval "[ -n \"\${$1+x}\" ]" || export "$1=$2"
}

# MPICH (the PyPI mpich wheel): busy-polling ranks on shared cores only progress when the
# scheduler preempts them; yielding on every poll keeps 4 ranks on 2 cores fast.
_conformance_default MPIR_CVAR_POLLS_BEFORE_YIELD 1

# Open MPI (if that is the MPI mpi4py uses): same yield behaviour, more ranks than slots, and
# no shared-memory single-copy mechanism (ptrace/CMA is often forbidden in containers).
_conformance_default OMPI_MCA_mpi_yield_when_idle 1
_conformance_default OMPI_MCA_rmaps_base_oversubscribe 1
_conformance_default PRTE_MCA_rmaps_default_mapping_policy :oversubscribe
_conformance_default OMPI_MCA_btl_vader_single_copy_mechanism none
_conformance_default OMPI_MCA_btl_sm_single_copy_mechanism none
if [ "$(id -u)" = 0 ]; then
    # CI containers run as root, which Open MPI refuses unless told.
    _conformance_default OMPI_ALLOW_RUN_AS_ROOT 1
    _conformance_default OMPI_ALLOW_RUN_AS_ROOT_CONFIRM 1
fi

# Stack traces of a rank that crashes end up in the job's output.
_conformance_default PYTHONFAULTHANDLER 1

unset -f _conformance_default
