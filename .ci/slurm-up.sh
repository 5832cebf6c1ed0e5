#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on this machine for the `slurm` tests (Debian/Ubuntu, root, no systemd).
#
# Installs Debian's Slurm + munge and, for job accounting, slurmdbd + MariaDB: submitit reads job states
# through sacct, and without accounting a cancelled job's result() never returns (submitit issue
# #1720; docs/references.md, "Cluster and multi-process notes"). The node declares NGPU fake GPUs
# (character devices with /dev/null's numbers: slurmd rejects plain files) and FAKE_CPUS CPUs (SlurmdParameters=config_overrides), so the GPUs are what limits concurrency.
# No cgroups (they cannot be written in a sandboxed kernel): proctrack/linuxproc + task/none.
# Every daemon binds loopback and writes a PID file under /run; .ci/slurm-down.sh stops them by those files.
# Re-running it restarts the cluster. Packages are only ever installed, never purged.
set -euo pipefail
NGPU=${NGPU:-4}
FAKE_CPUS=${FAKE_CPUS:-8}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
HOST=$(hostname -s)
START=$SECONDS
say() { echo "[slurm-up +$((SECONDS - START))s] $*"; }
fail() { echo "[slurm-up] FAILED: $*" >&2; tail -n 20 /var/log/slurm/*.log >&2 2>/dev/null || true; exit 1; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail "$what did not come up within ${limit}s"
}
[ "$(id -u)" -eq 0 ] || fail "run as root (it installs packages and starts daemons)"

packages="munge slurmctld slurmd slurm-client"
[ "$ACCOUNTING" = 1 ] && packages="$packages slurmdbd mariadb-server"
missing=$(for p in $packages; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  say "installed $(echo "$missing" | tr '\n' ' ')"
fi

"$(dirname "$0")/slurm-down.sh" >/dev/null  # a previous cluster of ours, if any

install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
for i in $(seq 0 $((NGPU - 1))); do [ -c "/dev/fakegpu$i" ] || mknod "/dev/fakegpu$i" c 1 3; done

if [ "$ACCOUNTING" = 1 ]; then
  accounting=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStorageTRES=gres/gpu'
else
  accounting="AccountingStorageType=accounting_storage/none"
fi
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=kdbench-ci
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
${accounting}
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=300
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${FAKE_CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket=${FAKE_CPUS} ThreadsPerCore=1 RealMemory=16000 Gres=gpu:${NGPU} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000
CONF
cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=${HOST} Name=gpu File=/dev/fakegpu[0-$((NGPU - 1))]
CONF

install -d -o munge -g munge /run/munge
[ -f /etc/munge/munge.key ] || { mungekey -c -f; chown munge:munge /etc/munge/munge.key; }
runuser -u munge -- /usr/sbin/munged
wait_for 10 munged sh -c 'munge -n | unmunge'
say "munged up"

if [ "$ACCOUNTING" = 1 ]; then
  /etc/init.d/mariadb start >/dev/null
  mysql -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'kdbench-ci';
                    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  (umask 077; cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=kdbench-ci
StorageLoc=slurm_acct_db
CONF
  )
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  /usr/sbin/slurmdbd
  wait_for 30 slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  say "mariadb + slurmdbd up"
fi

/usr/sbin/slurmctld
/usr/sbin/slurmd
wait_for 30 "an idle node" sh -c 'sinfo -h -o %T | grep -qx idle'
say "idle: $(sinfo -h -N -o '%N cpus=%c gres=%G')"
