#!/usr/bin/env bash
# Makes sure RabbitMQ (with the x-modulus-hash exchange of rabbitmq_sharding) and PostgreSQL
# are installed and running on this machine, as the test suite needs them, and Chromium for
# the web console's browser test (tests/console.rs). Idempotent.
set -euo pipefail

need_install=()
command -v rabbitmqctl >/dev/null 2>&1 || need_install+=(rabbitmq-server)
command -v pg_ctlcluster >/dev/null 2>&1 || need_install+=(postgresql)
command -v psql >/dev/null 2>&1 || need_install+=(postgresql-client)
command -v chromium >/dev/null 2>&1 || need_install+=(chromium)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "installing: ${need_install[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_install[@]}"
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
fi
rabbitmqctl -q await_startup --timeout 120
rabbitmq-plugins -q enable rabbitmq_sharding >/dev/null

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
# The tests connect as postgres over TCP without a password (trust), as on the dev machines.
# A fresh Debian cluster asks for one on 127.0.0.1 (scram-sha-256): allow loopback first.
if ! PGCONNECT_TIMEOUT=5 psql -w -h 127.0.0.1 -U postgres -qAtc 'select 1' >/dev/null 2>&1; then
  cluster="$(ls /etc/postgresql | head -n1)"
  hba="/etc/postgresql/$cluster/main/pg_hba.conf"
  echo "allowing postgres over 127.0.0.1 without a password ($hba)"
  sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$cluster" main reload
fi
psql -w -h 127.0.0.1 -U postgres -qAtc 'select 1' >/dev/null
echo "services: RabbitMQ and PostgreSQL ready"
