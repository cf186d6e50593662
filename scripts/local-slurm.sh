#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for testing `ncguide compare --launcher slurm` against a real
# scheduler (not a mock). Needs root (or sudo) and Debian/Ubuntu packages, which `up` installs.
#
#   scripts/local-slurm.sh up      install slurm-wlm + munge if missing, write the configs, start munged,
#                                  slurmctld and slurmd; returns once `sinfo` shows the node idle (safe twice)
#   scripts/local-slurm.sh down    stop the daemons (configs and packages stay)
#   scripts/local-slurm.sh status  exit 0 when the node answers and is idle or in use
#
# The node is this machine (`hostname -s`) with all its cores and its memory less 1 GiB, in one default
# partition `local`; accounting is off; jobs run as the submitting user. State lives in /var/lib/slurm-local.
set -euo pipefail

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/slurm-local
LOGS=/var/log/slurm-local

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
  local cpus mem
  cpus=$(nproc --all)
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  $SUDO mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
  $SUDO tee "$CONF" >/dev/null <<CONFIG
# written by scripts/local-slurm.sh: a one-node cluster for tests
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=5
InactiveLimit=0
JobRequeue=1
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONFIG
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  $SUDO mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  $SUDO chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  $SUDO chmod 0700 /etc/munge /var/lib/munge /var/log/munge
  $SUDO chmod 0400 /etc/munge/munge.key
  $SUDO chmod 0755 /run/munge
  $SUDO -u munge /usr/sbin/munged --force 2>/dev/null || $SUDO runuser -u munge -- /usr/sbin/munged --force
}

up() {
  case "$(node_state)" in idle*|mix*|alloc*) echo "slurm: node $NODE already up ($(node_state))"; return;; esac
  install_packages
  write_config
  start_munge
  pgrep -x slurmctld >/dev/null || $SUDO /usr/sbin/slurmctld
  pgrep -x slurmd >/dev/null || $SUDO /usr/sbin/slurmd
  for _ in $(seq 1 60); do
    case "$(node_state)" in
      idle*|mix*|alloc*) echo "slurm: node $NODE $(node_state) ($(nproc --all) CPUs)"; return;;
      down*|drain*) $SUDO scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true;;
    esac
    sleep 1
  done
  echo "slurm: node $NODE did not become idle within 60 s (state: $(node_state)); logs in $LOGS" >&2
  exit 1
}

down() {
  $SUDO pkill -x slurmd 2>/dev/null || true
  $SUDO pkill -x slurmctld 2>/dev/null || true
  $SUDO pkill -x munged 2>/dev/null || true
  for _ in $(seq 1 20); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.5; done
  echo "slurm: stopped"
}

case "${1:-}" in
  up) up;;
  down) down;;
  status) case "$(node_state)" in idle*|mix*|alloc*) echo "$(node_state)";; *) exit 1;; esac;;
  *) echo "usage: $0 up|down|status" >&2; exit 2;;
esac
