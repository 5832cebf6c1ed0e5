#!/usr/bin/env bash
# Stop the daemons .ci/slurm-up.sh started, each by its PID file (never by name), and wait for them to exit.
set -uo pipefail
stop() {  # stop PIDFILE
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    echo "stopped $1 ($pid)"
  fi
  rm -f "$1"  # slurmctld leaves its PID file behind; a stale one makes the package scripts call scancel
}
stop /run/slurmd.pid
stop /run/slurmctld.pid
stop /run/slurmdbd.pid
if [ -f /run/mysqld/mysqld.pid ] && [ -x /etc/init.d/mariadb ]; then /etc/init.d/mariadb stop >/dev/null 2>&1 && echo "stopped mariadb"; fi
stop /run/munge/munged.pid
exit 0
