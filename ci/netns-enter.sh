#!/usr/bin/env bash
# netns-enter.sh HOST WORD...: on a namespace host made by ci/netns-hosts.sh, run the words
# joined by spaces as a shell command line -- what rsh/ssh do, and so what Hydra's rsh launcher
# (HYDRA_LAUNCHER=rsh, HYDRA_LAUNCHER_EXEC=this file) and Open MPI's rsh agent expect.
host="$1"
shift
exec bash "$(dirname "${BASH_SOURCE[0]}")/netns-hosts.sh" enter "$host" sh -c "$*"
