#!/usr/bin/env bash
# Real single-node Apache Kafka broker (KRaft, combined broker+controller) for tests and demos.
#
#   scripts/kafka.sh install      fetch the broker jars from Maven Central into $KAFKA_HOME/libs
#   scripts/kafka.sh start        format storage if needed, start the broker, wait until it serves
#   scripts/kafka.sh stop         graceful stop (SIGTERM, up to 30 s, then SIGKILL)
#   scripts/kafka.sh restart      stop + start, keeping data
#   scripts/kafka.sh reset        stop and wipe all broker data (next start formats afresh)
#   scripts/kafka.sh status       exit 0 if running and serving, 1 otherwise
#   scripts/kafka.sh logs [N|-f]  last N (default 100) lines of the broker log, or follow it
#
# Environment:
#   KAFKA_HOME             default <repo>/.kafka (git-ignored)
#   KAFKA_PORT             PLAINTEXT listener port, default 9092 (always bound to 127.0.0.1)
#   KAFKA_CONTROLLER_PORT  CONTROLLER listener port, default 9093
#   KAFKA_HEAP_OPTS        default "-Xmx1g -Xms256m" (a whole test suite, or a few bench runs
#                          of 256 partitions, leave thousands of partitions; 512m ran out)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to serve, default 60
#   KAFKA_EXTRA_PROPERTIES more server.properties lines (newline- or space-separated key=value),
#                          appended last, so they win (e.g. to try a broker setting in bench/)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL, default 30
#   KAFKA_SASL_PORT        optional: also a SASL_SSL listener (SCRAM-SHA-512) on this port, with a
#                          certificate made by openssl on first use in $KAFKA_HOME/ssl (clients
#                          trust $KAFKA_HOME/ssl/ca.pem); unset (the default): PLAINTEXT only
#   KAFKA_SCRAM_USER       the SCRAM-SHA-512 user created when storage is formatted, default keyflow
#   KAFKA_SCRAM_PASSWORD   its password, default keyflow-secret (a broker formatted earlier keeps
#                          its users: add one with kafka-configs --alter --entity-type users)
#
# The Kafka version is pinned in scripts/kafka/pom.xml.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"

KAFKA_HOME="${KAFKA_HOME:-$REPO_ROOT/.kafka}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1g -Xms256m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-}"
KAFKA_SCRAM_USER="${KAFKA_SCRAM_USER:-keyflow}"
KAFKA_SCRAM_PASSWORD="${KAFKA_SCRAM_PASSWORD:-keyflow-secret}"
HOST=127.0.0.1

LIBS="$KAFKA_HOME/libs"
MARKER="$LIBS/.installed"
DATA="$KAFKA_HOME/data"
CONF_DIR="$KAFKA_HOME/config"
SERVER_PROPS="$CONF_DIR/server.properties"
LOG4J_CONF="$CONF_DIR/log4j2.properties"
TOOLS_LOG4J_CONF="$CONF_DIR/tools-log4j2.properties"
BROKER_LOG="$KAFKA_HOME/broker.log"
PID_FILE="$KAFKA_HOME/broker.pid"
SSL_DIR="$KAFKA_HOME/ssl"
LOCK_FILE="$KAFKA_HOME/.lock"

say() { echo "kafka.sh: $*" >&2; }
die() { echo "kafka.sh: ERROR: $*" >&2; exit 1; }

pom_prop() { # pom_prop NAME -> value of <NAME> in the pom's <properties>
  sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$POM" | head -n1
}
KAFKA_VERSION="$(pom_prop kafka.version)"
LOG4J_VERSION="$(pom_prop log4j.version)"
[[ -n "$KAFKA_VERSION" ]] || die "cannot read kafka.version from $POM"
INSTALL_ID="kafka_2.13-$KAFKA_VERSION log4j-$LOG4J_VERSION"

# Serialise start/stop/install/reset between concurrent callers (several test runs may share
# one checkout and therefore one broker).
with_lock() {
  mkdir -p "$KAFKA_HOME"
  exec 9>"$LOCK_FILE"
  if ! flock -w 120 9; then die "could not take $LOCK_FILE within 120 s (another kafka.sh running?)"; fi
}

port_open() { # port_open PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# PID of our broker if the pid file names a live kafka.Kafka process, else empty.
broker_pid() {
  [[ -f "$PID_FILE" ]] || return 0
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  if [[ "$cmdline" == *kafka.Kafka* ]]; then
    echo "$pid"
  fi
}

# Port the running broker was configured with (it may differ from $KAFKA_PORT in this shell).
running_port() {
  if [[ -f "$SERVER_PROPS" ]]; then
    sed -n "s|^listeners=PLAINTEXT://$HOST:\([0-9]*\),.*|\1|p" "$SERVER_PROPS" | head -n1
  else
    echo "$KAFKA_PORT"
  fi
}

installed() {
  [[ -f "$MARKER" && "$(cat "$MARKER")" == "$INSTALL_ID" ]] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null
}

cmd_install() {
  if installed; then
    say "Kafka $KAFKA_VERSION already installed in $LIBS (nothing to do)"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  command -v java >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
  with_lock
  if installed; then say "Kafka $KAFKA_VERSION already installed in $LIBS"; return 0; fi
  say "installing Kafka $KAFKA_VERSION (kafka_2.13 + log4j $LOG4J_VERSION) from Maven Central into $LIBS ..."
  local t0 tmp
  t0=$(date +%s)
  tmp="$KAFKA_HOME/libs.tmp.$$"
  rm -rf "$tmp"
  if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$tmp" >&2; then
    rm -rf "$tmp"
    die "mvn dependency:copy-dependencies failed"
  fi
  compgen -G "$tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"; }
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  echo "$INSTALL_ID" >"$MARKER"
  say "installed $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $(( $(date +%s) - t0 )) s"
}

# A CA and the broker's certificate for 127.0.0.1/localhost, signed by it, as a PKCS12 keystore.
make_certificates() {
  [[ -f "$SSL_DIR/broker.p12" && -f "$SSL_DIR/ca.pem" ]] && return 0
  command -v openssl >/dev/null || die "openssl not found (needed for KAFKA_SASL_PORT's certificate)"
  mkdir -p "$SSL_DIR"
  say "making a CA and a broker certificate in $SSL_DIR ..."
  (
    cd "$SSL_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=keyflow test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key \
      -out broker.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost\n' >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.pem 2>/dev/null
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem \
      -passout pass:keyflow-keystore -out broker.p12
  ) || die "making the certificates in $SSL_DIR failed"
}

write_config() {
  mkdir -p "$CONF_DIR" "$DATA"
  local listeners="PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT"
  local advertised="PLAINTEXT://$HOST:$KAFKA_PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "$KAFKA_SASL_PORT" ]]; then
    make_certificates
    listeners="$listeners,SASL_SSL://$HOST:$KAFKA_SASL_PORT"
    advertised="$advertised,SASL_SSL://$HOST:$KAFKA_SASL_PORT"
    protocols="$protocols,SASL_SSL:SASL_SSL"
  fi
  cat >"$SERVER_PROPS" <<EOF
# Generated by scripts/kafka.sh on every start; edits are overwritten.
node.id=1
process.roles=broker,controller
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
# static single-voter quorum: survives a change of KAFKA_CONTROLLER_PORT between runs
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
log.dirs=$DATA
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
# fewer internal partitions than the default 50: faster first group/transaction and recovery
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a kill -9 the restarted broker must wait until the controller expires the old
# incarnation's session (default 9 s); fault-tolerance tests kill the broker on purpose.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
# Let workers use a session timeout under Kafka's 6 s minimum (failover in seconds, with
# --session-timeout), and abort a dead producer's timed-out transaction within a second of
# its timeout instead of up to 10 s later (docs/operations.md, "Failover").
group.min.session.timeout.ms=1000
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
EOF
  if [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]]; then
    echo "# KAFKA_EXTRA_PROPERTIES" >>"$SERVER_PROPS"
    tr ' ' '\n' <<<"$KAFKA_EXTRA_PROPERTIES" | sed '/^$/d' >>"$SERVER_PROPS"
  fi
  if [[ -n "$KAFKA_SASL_PORT" ]]; then
    cat >>"$SERVER_PROPS" <<EOF
# KAFKA_SASL_PORT: SASL_SSL with SCRAM-SHA-512 (users are created at format time)
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$SSL_DIR/broker.p12
ssl.keystore.password=keyflow-keystore
ssl.key.password=keyflow-keystore
EOF
  fi
  cat >"$LOG4J_CONF" <<'EOF'
# Generated by scripts/kafka.sh. Everything goes to stdout, which kafka.sh sends to broker.log.
status = warn
name = keyflow-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
  cat >"$TOOLS_LOG4J_CONF" <<'EOF'
# Generated by scripts/kafka.sh for kafka-storage: warnings and errors only, to stderr.
status = warn
name = keyflow-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

storage_tool() { # quiet: the tool would otherwise log the whole KafkaConfig
  java -Dlog4j2.configurationFile="$TOOLS_LOG4J_CONF" -cp "$LIBS/*" kafka.tools.StorageTool "$@"
}

format_if_needed() {
  if [[ -f "$DATA/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  cluster_id="$(storage_tool random-uuid | tail -n1)"
  local scram=()
  if [[ -n "$KAFKA_SASL_PORT" ]]; then
    scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
  fi
  say "formatting KRaft storage in $DATA (cluster id $cluster_id) ..."
  local out
  # Quiet unless it fails: with --add-scram the tool prints the credentials' salts and keys.
  out="$(storage_tool format --config "$SERVER_PROPS" --cluster-id "$cluster_id" \
    --ignore-formatted "${scram[@]}" 2>&1)" || { echo "$out" >&2; die "kafka-storage format failed"; }
}

cmd_start() {
  installed || die "Kafka not installed in $LIBS: run scripts/kafka.sh install (or scripts/setup.sh)"
  with_lock
  local pid
  pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then
    local port
    port="$(running_port)"
    if port_open "$port"; then
      say "already running (pid $pid, $HOST:$port)"
      [[ "$port" == "$KAFKA_PORT" ]] || say "WARNING: it listens on $port, not KAFKA_PORT=$KAFKA_PORT"
      return 0
    fi
    die "broker pid $pid is alive but $HOST:$port does not answer (still starting? see: scripts/kafka.sh logs)"
  fi
  rm -f "$PID_FILE"
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $KAFKA_SASL_PORT; do
    if port_open "$p"; then
      die "port $HOST:$p is already in use by another process (not our broker); set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
    fi
  done

  write_config
  format_if_needed

  [[ -f "$BROKER_LOG" ]] && mv -f "$BROKER_LOG" "$BROKER_LOG.prev"
  say "starting Kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT), log $BROKER_LOG ..."
  local t0 now
  t0=$(date +%s%N)
  # New session so the broker outlives the shell/job that started it; the inner shell writes
  # its own pid and then execs java, so the pid file names the JVM.
  # shellcheck disable=SC2086
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    java $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
    -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$KAFKA_HOME" \
    -cp "$LIBS/*" kafka.Kafka "$SERVER_PROPS" \
    </dev/null >"$BROKER_LOG" 2>&1 9>&- &

  local deadline=$(( $(date +%s) + KAFKA_START_TIMEOUT ))
  while :; do
    sleep 0.2
    pid="$(broker_pid)"
    if [[ -z "$pid" && -f "$PID_FILE" ]] && ! kill -0 "$(cat "$PID_FILE" 2>/dev/null || echo 0)" 2>/dev/null; then
      say "broker process exited during start-up; log tail:"
      tail -n 60 "$BROKER_LOG" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    if [[ -n "$pid" ]] && grep -q 'Kafka Server started' "$BROKER_LOG" 2>/dev/null && port_open "$KAFKA_PORT"; then
      break
    fi
    if (( $(date +%s) >= deadline )); then
      say "broker did not come up within ${KAFKA_START_TIMEOUT} s; log tail:"
      tail -n 60 "$BROKER_LOG" >&2 || true
      if [[ -n "$pid" ]]; then say "killing pid $pid"; kill -9 "$pid" 2>/dev/null || true; fi
      rm -f "$PID_FILE"
      exit 1
    fi
  done
  now=$(date +%s%N)
  say "Kafka $KAFKA_VERSION is up (pid $pid, bootstrap $HOST:$KAFKA_PORT) after $(( (now - t0) / 1000000 )) ms"
}

cmd_stop() {
  with_lock
  local pid
  pid="$(broker_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "$PID_FILE"
    say "not running"
    return 0
  fi
  say "stopping broker pid $pid (SIGTERM, up to ${KAFKA_STOP_TIMEOUT} s) ..."
  local t0 deadline
  t0=$(date +%s%N)
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(( $(date +%s) + KAFKA_STOP_TIMEOUT ))
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) >= deadline )); then
      say "still alive after ${KAFKA_STOP_TIMEOUT} s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  say "stopped after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

cmd_status() {
  local pid port
  pid="$(broker_pid)"
  port="$(running_port)"
  if [[ -n "$pid" ]] && port_open "$port"; then
    echo "running (pid $pid, bootstrap $HOST:$port, Kafka $KAFKA_VERSION, home $KAFKA_HOME)"
    return 0
  elif [[ -n "$pid" ]]; then
    echo "process $pid alive but $HOST:$port not answering (starting or stuck)"
    return 1
  fi
  echo "not running"
  return 1
}

cmd_logs() {
  [[ -f "$BROKER_LOG" ]] || die "no broker log at $BROKER_LOG"
  if [[ "${1:-}" == "-f" ]]; then
    exec tail -n 50 -F "$BROKER_LOG"
  fi
  tail -n "${1:-100}" "$BROKER_LOG"
}

cmd_reset() {
  cmd_stop
  say "wiping broker data $DATA"
  rm -rf "$DATA" "$SERVER_PROPS"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  reset) cmd_reset ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
