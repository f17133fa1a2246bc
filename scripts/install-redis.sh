#!/usr/bin/env bash
# Install the Redis server used by foxwork's Redis tests.
#
# The test harness (tests/harness/redis.py) runs throwaway redis-server processes of its own
# on free loopback ports; it never uses the system service. The Debian package may start
# that service: this script disables it where systemd runs, and stops any redis-server
# process that the install itself started (by its PID), so nothing is left listening on
# port 6379. Idempotent: does nothing (and prints nothing) when Redis is already installed.
set -euo pipefail

SERVER=/usr/bin/redis-server
CLI=/usr/bin/redis-cli

if [[ -x "$SERVER" && -x "$CLI" ]]; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    cat >&2 <<MSG
Redis is not installed ($SERVER or $CLI is missing) and this script is not running as root.
Install it with one of:
    sudo bash scripts/install-redis.sh
    sudo apt-get update && sudo apt-get install -y redis-server
or point the tests at an existing loopback Redis:
    export FOXWORK_TEST_REDIS_URL=redis://127.0.0.1:6379/0
MSG
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-redis.sh: apt-get not found; install redis-server with your" \
        "package manager so that $SERVER and $CLI exist." >&2
    exit 1
fi

# pids: the ids of all running processes, one a line.
pids() {
    local entry
    for entry in /proc/[0-9]*; do
        echo "${entry#/proc/}"
    done
}

before="$(pids)"

echo "Installing redis-server with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq redis-server >/dev/null </dev/null

if [[ ! -x "$SERVER" || ! -x "$CLI" ]]; then
    echo "install-redis.sh: redis-server was installed but $SERVER or $CLI is missing." >&2
    exit 1
fi

if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now --quiet redis-server.service 2>/dev/null || true
fi

# The binary did not exist before the install, so a process running it that was not there
# before is one the install started (an init script without systemd): stop it by its PID.
binary="$(readlink -f "$SERVER")"
for pid in $(comm -13 <(sort <<<"$before") <(pids | sort)); do
    if [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$binary" ]]; then
        echo "Stopping the redis-server (pid $pid) that the package started; the tests run their own."
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$binary" ]] || continue 2
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
done

echo "Installed redis-server $(dpkg-query -W -f='${Version}' redis-server 2>/dev/null || true)."
