#!/usr/bin/env bash
# A RabbitMQ 4.0 node beside the host's RabbitMQ, for running the broker tests against 4.x.
# Debian trixie ships rabbitmq-server 4.0.5 (Erlang 27); it runs here chrooted in a trixie
# debootstrap root, on its own ports and epmd so the host's broker keeps 5672/4369.
#
#   scripts/rabbitmq4.sh setup       build the root (about 1.5 min; skipped when done)
#   scripts/rabbitmq4.sh start       setup if needed, start the node, wait for it (idempotent)
#   scripts/rabbitmq4.sh stop        stop the node and unmount (idempotent)
#   scripts/rabbitmq4.sh ctl ARGS    rabbitmqctl against the node
#   scripts/rabbitmq4.sh queues ARGS rabbitmq-queues against the node
#   scripts/rabbitmq4.sh plugins ARGS rabbitmq-plugins against the node (e.g. disable
#                                    rabbitmq_sharding, as managed brokers without it run)
#
# Tests use it through CIO_TEST_AMQP_PORT=5673 CIO_TEST_RABBITMQCTL="scripts/rabbitmq4.sh ctl".
# Root dir: RMQ4_ROOT (default /var/lib/cio-gateway/rmq4), outside the repository.
set -euo pipefail

ROOT="${RMQ4_ROOT:-/var/lib/cio-gateway/rmq4}"
NODE=rmq4@localhost
AMQP_PORT="${RMQ4_PORT:-5673}"
DIST_PORT=25673
EPMD_PORT=4370
MIRROR="${RMQ4_MIRROR:-http://deb.debian.org/debian}"
PID_FILE=/var/lib/rabbitmq/mnesia/rmq4.pid

# The node's environment, the same for the server and every CLI call (the CLI finds the node
# through this epmd and reads the same cookie).
node_env=(
  env -i
  PATH=/usr/sbin:/usr/bin:/sbin:/bin
  HOME=/var/lib/rabbitmq
  LANG=C.UTF-8
  RABBITMQ_NODENAME="$NODE"
  RABBITMQ_NODE_PORT="$AMQP_PORT"
  RABBITMQ_DIST_PORT="$DIST_PORT"
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  RABBITMQ_PID_FILE="$PID_FILE"
  ERL_EPMD_PORT="$EPMD_PORT"
  ERL_EPMD_ADDRESS=127.0.0.1
  "ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}"
)

in_root() { chroot "$ROOT" "${node_env[@]}" "$@"; }

mount_all() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  mountpoint -q "$ROOT/sys" || mount -t sysfs sysfs "$ROOT/sys"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
  mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
}

umount_all() {
  for m in dev/pts dev sys proc; do
    if mountpoint -q "$ROOT/$m"; then umount "$ROOT/$m" || umount -l "$ROOT/$m"; fi
  done
}

setup() {
  if [ -e "$ROOT/.cio-setup-done" ]; then
    return 0
  fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "rabbitmq4: installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  fi
  echo "rabbitmq4: building a Debian trixie root in $ROOT (about 1.5 min)"
  umount_all
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
    || { tail -n 20 "$ROOT.debootstrap.log" >&2; exit 1; }
  # The package must start nothing inside the root.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod +x "$ROOT/usr/sbin/policy-rc.d"
  # Same uid/gid as the host's rabbitmq user, so host tools show the files under that name.
  local uid gid
  uid="$(id -u rabbitmq 2>/dev/null || echo 106)"
  gid="$(id -g rabbitmq 2>/dev/null || echo 109)"
  chroot "$ROOT" groupadd --system --gid "$gid" rabbitmq
  chroot "$ROOT" useradd --system --uid "$uid" --gid "$gid" --home-dir /var/lib/rabbitmq \
    --shell /usr/sbin/nologin rabbitmq
  mount_all
  chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends rabbitmq-server >"$ROOT.apt.log" 2>&1 \
    || { umount_all; tail -n 20 "$ROOT.apt.log" >&2; exit 1; }
  umount_all
  mkdir -p "$ROOT/etc/rabbitmq"
  # Plugins enabled offline: consistent hashing and the sharding plugin the topology uses.
  echo '[rabbitmq_sharding,rabbitmq_consistent_hash_exchange].' >"$ROOT/etc/rabbitmq/enabled_plugins"
  # Keep /etc/rabbitmq's env file from overriding the node name and ports.
  : >"$ROOT/etc/rabbitmq/rabbitmq-env.conf"
  # The tests connect as guest from 127.0.0.1, which RabbitMQ allows by default (loopback).
  touch "$ROOT/.cio-setup-done"
  echo "rabbitmq4: root ready ($(chroot "$ROOT" dpkg-query -W -f '${Version}' rabbitmq-server))"
}

running() {
  [ -d "$ROOT/proc" ] && mountpoint -q "$ROOT/proc" && in_root rabbitmqctl -q -n "$NODE" ping >/dev/null 2>&1
}

start() {
  setup
  if running; then
    in_root rabbitmqctl -q -n "$NODE" await_startup --timeout 60 >/dev/null
    return 0
  fi
  mount_all
  # Every start has the plugins the topology uses, whatever a run disabled before.
  echo '[rabbitmq_sharding,rabbitmq_consistent_hash_exchange].' >"$ROOT/etc/rabbitmq/enabled_plugins"
  local log="$ROOT/var/log/rabbitmq/cio-start.log"
  mkdir -p "$ROOT/var/log/rabbitmq"
  # setsid: the node outlives this script and does not get the caller's signals.
  setsid chroot "$ROOT" "${node_env[@]}" rabbitmq-server >"$log" 2>&1 </dev/null &
  local i
  for i in $(seq 1 120); do
    if in_root rabbitmqctl -q -n "$NODE" ping >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  in_root rabbitmqctl -q -n "$NODE" await_startup --timeout 60 >/dev/null \
    || { tail -n 30 "$log" >&2; exit 1; }
  echo "rabbitmq4: $NODE up on 127.0.0.1:$AMQP_PORT ($(in_root rabbitmqctl -q -n "$NODE" version))"
}

stop() {
  if [ ! -x "$ROOT/usr/sbin/rabbitmqctl" ]; then
    return 0
  fi
  if mountpoint -q "$ROOT/proc"; then
    if [ -e "$ROOT$PID_FILE" ]; then
      in_root rabbitmqctl -q -n "$NODE" stop "$PID_FILE" >/dev/null 2>&1 || true
    fi
    in_root epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
  fi
  umount_all
}

case "${1:-}" in
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  ctl) shift; in_root rabbitmqctl -n "$NODE" "$@" ;;
  queues) shift; in_root rabbitmq-queues -n "$NODE" "$@" ;;
  plugins) shift; in_root rabbitmq-plugins -n "$NODE" "$@" ;;
  *) echo "usage: $0 setup|start|stop|ctl ARGS...|queues ARGS...|plugins ARGS..." >&2; exit 2 ;;
esac
