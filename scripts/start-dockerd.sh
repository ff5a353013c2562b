#!/usr/bin/env bash
# Starts a Docker engine on a host where none runs and no init system starts one (a VM or CI
# machine where you are root): Debian's docker.io, overlay2 storage (vfs when overlay2 cannot
# mount), the cgroupfs cgroup driver (cgroup v2 is mounted when no cgroup file system is).
# Does nothing when `docker info` already answers. Log: $DOCKERD_LOG (default /var/log/dockerd.log).
#   scripts/start-dockerd.sh          install what is missing (apt-get), start, wait until it answers
set -euo pipefail
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

if docker info >/dev/null 2>&1; then
  echo "the Docker engine answers already"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "start-dockerd.sh starts dockerd as root; run it with sudo" >&2; exit 1; }

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# dockerd needs a cgroup hierarchy: mount cgroup v2 when nothing is mounted there
if ! grep -q ' /sys/fs/cgroup' /proc/mounts; then
  mkdir -p /sys/fs/cgroup
  mount -t cgroup2 none /sys/fs/cgroup
fi

driver=overlay2
probe=$(mktemp -d)
mkdir -p "$probe"/{lower,upper,work,merged}
if ! mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
     "$probe/merged" 2>/dev/null; then
  driver=vfs
else
  umount "$probe/merged"
fi
rm -rf "$probe"

echo "starting dockerd (storage driver $driver, cgroupfs), log $LOG"
nohup dockerd --storage-driver "$driver" --exec-opt native.cgroupdriver=cgroupfs >"$LOG" 2>&1 &
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    docker version --format 'Docker engine {{.Server.Version}} answers'
    exit 0
  fi
  sleep 1
done
echo "dockerd did not answer within 60 s; the last lines of $LOG:" >&2
tail -20 "$LOG" >&2
exit 1
