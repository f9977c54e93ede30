#!/usr/bin/env bash
# A three-node RabbitMQ cluster beside the host's RabbitMQ, for the cluster tests (tests/cluster.rs):
# the Debian rabbitmq-server run as three more Erlang nodes c1, c2, c3 @localhost, on their own
# ports and their own epmd, so the host's rabbit@localhost keeps 5672/4369 and is never touched.
#
#   scripts/rabbitmq-cluster.sh start           start the three nodes, join them, wait (idempotent)
#   scripts/rabbitmq-cluster.sh stop            stop them, kill leftovers, wipe their data (idempotent)
#   scripts/rabbitmq-cluster.sh kill NODE       SIGKILL the node's beam.smp (NODE: c1, c2 or c3)
#   scripts/rabbitmq-cluster.sh restart NODE    start a killed node again, wait until it rejoined
#   scripts/rabbitmq-cluster.sh ctl NODE ARGS   rabbitmqctl against that node (NODE any: the
#                                               first one running, for cluster-wide commands)
#   scripts/rabbitmq-cluster.sh queues NODE ARGS  rabbitmq-queues against that node
#   scripts/rabbitmq-cluster.sh leader QUEUE VHOST  the node leading a quorum queue (e.g. c2)
#
# AMQP ports 5681-5683 (c1-c3). Data under CLUSTER_ROOT (default /var/lib/cio-gateway/cluster),
# outside the repository. `stop` wipes it: nodes stopped one by one each wait at boot for the
# peers they last saw, so a cluster is only ever started fresh.
set -euo pipefail

ROOT="${CLUSTER_ROOT:-/var/lib/cio-gateway/cluster}"
BIN=/usr/lib/rabbitmq/bin
EPMD_PORT=4371
NODES=(c1 c2 c3)

node_index() {
  case "$1" in
    c1) echo 1 ;;
    c2) echo 2 ;;
    c3) echo 3 ;;
    *) echo "rabbitmq-cluster: no node $1 (c1, c2 or c3)" >&2; exit 2 ;;
  esac
}

# The node's environment, the same for the server and every CLI call: the CLI finds the node
# through this epmd and authenticates with the shared cookie in HOME. The empty env file keeps
# /etc/rabbitmq/rabbitmq-env.conf (the host node's NODENAME) from being read.
node_env() {
  local node="$1" i
  i="$(node_index "$node")"
  local dir="$ROOT/$node"
  echo env -i \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$ROOT/home" \
    LANG=C.UTF-8 \
    RABBITMQ_NODENAME="$node@localhost" \
    RABBITMQ_NODE_PORT="568$i" \
    RABBITMQ_DIST_PORT="2568$i" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_CONFIG_FILE="$ROOT/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$ROOT/enabled_plugins" \
    RABBITMQ_CONF_ENV_FILE="$ROOT/rabbitmq-env.conf" \
    ERL_EPMD_PORT="$EPMD_PORT" \
    ERL_EPMD_ADDRESS=127.0.0.1
}

# Runs a command in NODE's environment (ERL_FLAGS holds spaces, so it is passed apart).
in_env() {
  local node="$1"
  shift
  # shellcheck disable=SC2046
  $(node_env "$node") "ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}" "$@"
}

ctl() {
  local node="$1"
  shift
  if [ "$node" = any ]; then
    node="$(first_running)" || { echo "rabbitmq-cluster: no node running" >&2; return 1; }
  fi
  in_env "$node" "$BIN/rabbitmqctl" -n "$node@localhost" "$@"
}

queues() {
  local node="$1"
  shift
  in_env "$node" "$BIN/rabbitmq-queues" -n "$node@localhost" "$@"
}

running() {
  ctl "$1" -q ping >/dev/null 2>&1
}

first_running() {
  local node
  for node in "${NODES[@]}"; do
    # A killed node's pid file names a dead process: skip it without asking epmd.
    if [ -n "$(node_pid "$node")" ] && running "$node"; then
      echo "$node"
      return 0
    fi
  done
  return 1
}

prepare() {
  mkdir -p "$ROOT/home"
  if [ ! -s "$ROOT/home/.erlang.cookie" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ROOT/home/.erlang.cookie"
  fi
  chmod 600 "$ROOT/home/.erlang.cookie"
  : >"$ROOT/rabbitmq-env.conf"
  # The x-modulus-hash exchange of the topology comes with the sharding plugin.
  echo '[rabbitmq_sharding].' >"$ROOT/enabled_plugins"
  # A node cut off from the majority stops serving rather than diverge.
  cat >"$ROOT/rabbitmq.conf" <<'EOF'
cluster_partition_handling = pause_minority
loopback_users.guest = true
EOF
  local node
  for node in "${NODES[@]}"; do
    mkdir -p "$ROOT/$node/mnesia" "$ROOT/$node/log"
  done
}

# Starts the node's server in the background (setsid: it outlives this script and does not get
# the caller's signals); does not wait.
launch() {
  local node="$1"
  setsid bash -c "$(printf '%q ' $(node_env "$node") \
    "ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}" "$BIN/rabbitmq-server")" \
    >"$ROOT/$node/log/cio-start.log" 2>&1 </dev/null &
}

# Waits until the node answers and has booted (at most about 90 s).
await_node() {
  local node="$1" i
  for i in $(seq 1 120); do
    if running "$node"; then break; fi
    sleep 0.5
  done
  ctl "$node" -q await_startup --timeout 90 >/dev/null \
    || { tail -n 30 "$ROOT/$node/log/cio-start.log" >&2; exit 1; }
}

# How many of c1-c3 the node sees running in its cluster.
running_count() {
  ctl "$1" -q eval 'rabbit_nodes:all_running().' 2>/dev/null \
    | grep -o 'c[123]@localhost' | sort -u | wc -l
}

all_running() {
  [ "$(running_count c1)" = 3 ]
}

start() {
  prepare
  local node
  if running c1 && running c2 && running c3 && all_running; then
    return 0
  fi
  for node in "${NODES[@]}"; do
    if ! running "$node"; then launch "$node"; fi
  done
  for node in "${NODES[@]}"; do await_node "$node"; done
  for node in c2 c3; do
    if ! ctl "$node" -q eval 'rabbit_nodes:all().' 2>/dev/null | grep -q c1@localhost; then
      ctl "$node" -q stop_app >/dev/null
      ctl "$node" -q join_cluster c1@localhost >/dev/null
      ctl "$node" -q start_app >/dev/null
      await_node "$node"
    fi
  done
  all_running || { echo "rabbitmq-cluster: not all three nodes joined" >&2; exit 1; }
  echo "rabbitmq-cluster: c1, c2, c3 @localhost up on 127.0.0.1:5681-5683 ($(ctl c1 -q version))"
}

# The beam.smp pid of the node, from its pid file (empty if none or not running).
node_pid() {
  local file="$ROOT/$1/pid" pid
  [ -s "$file" ] || return 0
  pid="$(tr -d '[:space:]' <"$file")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

kill_node() {
  local node="$1" pid
  node_index "$node" >/dev/null
  pid="$(node_pid "$node")"
  if [ -z "$pid" ]; then
    echo "rabbitmq-cluster: $node is not running" >&2
    return 0
  fi
  kill -KILL "$pid"
  local i
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "rabbitmq-cluster: $node ($pid) still alive after SIGKILL" >&2
  exit 1
}

restart_node() {
  local node="$1"
  node_index "$node" >/dev/null
  if ! running "$node"; then launch "$node"; fi
  await_node "$node"
  local i
  for i in $(seq 1 120); do
    if all_running; then
      echo "rabbitmq-cluster: $node rejoined"
      return 0
    fi
    sleep 0.5
  done
  echo "rabbitmq-cluster: $node did not rejoin" >&2
  exit 1
}

stop() {
  [ -d "$ROOT" ] || return 0
  local node pid
  for node in "${NODES[@]}"; do
    if running "$node"; then
      # With the pid file, stop returns once the process has exited.
      ctl "$node" -q stop "$ROOT/$node/pid" >/dev/null 2>&1 || true
    fi
  done
  # Whatever did not stop (or was half started): its beam by pid file, then the epmd of ours.
  local i
  for node in "${NODES[@]}"; do
    pid="$(node_pid "$node")"
    if [ -n "$pid" ]; then
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
  done
  in_env c1 epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
  for node in "${NODES[@]}"; do rm -rf "${ROOT:?}/$node"; done
}

leader() {
  local queue="$1" vhost="$2" node
  for node in "${NODES[@]}"; do
    if running "$node"; then
      # One JSON object a line, e.g. {"Node Name":"c2@localhost","Raft State":"leader",...}
      queues "$node" -q quorum_status "$queue" -p "$vhost" --formatter json 2>/dev/null \
        | grep '"Raft State":"leader"' | grep -o '"Node Name":"[^"@]*' | cut -d'"' -f4 | head -n 1
      return 0
    fi
  done
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) kill_node "${2:?NODE}" ;;
  restart) restart_node "${2:?NODE}" ;;
  ctl) shift; node="${1:?NODE}"; shift; ctl "$node" "$@" ;;
  queues) shift; node="${1:?NODE}"; shift; queues "$node" "$@" ;;
  leader) leader "${2:?QUEUE}" "${3:?VHOST}" ;;
  *) echo "usage: $0 start|stop|kill NODE|restart NODE|ctl NODE ARGS...|queues NODE ARGS...|leader QUEUE VHOST" >&2; exit 2 ;;
esac
