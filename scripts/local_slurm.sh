#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying the SLURM launcher and DDP under srun:
#   scripts/local_slurm.sh start    # munged, slurmctld and slurmd; waits until the node is idle
#   scripts/local_slurm.sh stop     # stops the three daemons this script started
# Needs the Debian packages slurm-wlm and munge (apt-get install -y slurm-wlm munge) and root.
# Everything lives in $DDPM_SLURM_DIR (default /tmp/ddpm-local-slurm): slurm.conf, the munge
# key and socket, state, spool and logs. Use the cluster with SLURM_CONF=$DDPM_SLURM_DIR/slurm.conf.
# Cgroup-free (proctrack/linuxproc, task/none), no accounting; partition `local` with one node,
# this machine under its host name (which DDP's rendezvous resolves), DDPM_SLURM_CPUS CPUs
# (default 2) and 80% of the memory.
set -euo pipefail

DIR="${DDPM_SLURM_DIR:-/tmp/ddpm-local-slurm}"
CPUS="${DDPM_SLURM_CPUS:-2}"
CTLD_PORT="${DDPM_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${DDPM_SLURM_SLURMD_PORT:-6818}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
export SLURM_CONF="$CONF"

write_config() {
  local memory_mb
  memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat >"$CONF" <<EOF
ClusterName=ddpm-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$memory_mb State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  mkdir -p "$DIR/munge"
  chmod 700 "$DIR/munge"
  if [ ! -f "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
  fi
  munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
}

wait_until_idle() {
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo --noheader --nodes="$NODE" --format=%t 2>/dev/null || true)
    if [ "$state" = "idle" ]; then
      echo "local Slurm up: partition local, node $NODE ($CPUS CPUs); export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 1
  done
  echo "local Slurm did not come up (node state '${state:-none}'); see $DIR/log/" >&2
  return 1
}

stop_daemon() {
  local pidfile="$1"
  if [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

case "${1:-}" in
  start)
    for tool in munged slurmctld slurmd sinfo; do
      command -v "$tool" >/dev/null || {
        echo "$tool not found: apt-get install -y slurm-wlm munge" >&2
        exit 1
      }
    done
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    write_config
    start_munge
    slurmctld -f "$CONF" -c
    slurmd -f "$CONF"
    wait_until_idle
    ;;
  stop)
    stop_daemon "$DIR/slurmd.pid"
    stop_daemon "$DIR/slurmctld.pid"
    stop_daemon "$DIR/munge/munged.pid"
    echo "local Slurm stopped"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
