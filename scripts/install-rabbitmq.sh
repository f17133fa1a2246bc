#!/usr/bin/env bash
# Install the RabbitMQ server used by foxwork's real-broker tests.
#
# The test harness (tests/harness/rabbitmq.py) runs throwaway nodes straight from
# /usr/lib/rabbitmq/bin; it never uses the system service. Idempotent: does nothing
# (and prints nothing) when RabbitMQ is already installed.
set -euo pipefail

SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server

if [[ -x "$SERVER" ]]; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    cat >&2 <<MSG
RabbitMQ is not installed ($SERVER is missing) and this script is not running as root.
Install it with one of:
    sudo bash scripts/install-rabbitmq.sh
    sudo apt-get update && sudo apt-get install -y rabbitmq-server
or point the tests at an existing loopback broker:
    export FOXWORK_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/
MSG
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-rabbitmq.sh: apt-get not found; install rabbitmq-server with your" \
        "package manager so that $SERVER exists." >&2
    exit 1
fi

echo "Installing rabbitmq-server with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq rabbitmq-server >/dev/null

if [[ ! -x "$SERVER" ]]; then
    echo "install-rabbitmq.sh: rabbitmq-server was installed but $SERVER is missing." >&2
    exit 1
fi

echo "Installed rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || true)."
if [[ -d /run/systemd/system ]]; then
    echo "Note: the package may have started the system service on port 5672; the tests" \
        "do not need it (sudo systemctl disable --now rabbitmq-server)."
fi
