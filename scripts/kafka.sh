#!/usr/bin/env bash
# Provision and run a real single-node Apache Kafka (KRaft, broker+controller) on loopback.
#
#   scripts/kafka.sh fetch    download the broker jars with Maven into the cache (once per version)
#   scripts/kafka.sh up       fetch, format storage, start, wait until metadata answers (idempotent)
#   scripts/kafka.sh down     stop the broker by its pid (idempotent)
#   scripts/kafka.sh status   exit 0 when the broker is running
#   scripts/kafka.sh env      print the instance's addresses (and SASL_SSL client settings) as NAME=value
#   scripts/kafka.sh logs     print the broker's log
#
# Environment:
#   KAFKA_VERSION        broker version from Maven Central     (default 4.1.1)
#   KAFKA_PORT           PLAINTEXT listener on 127.0.0.1       (default 9092)
#   KAFKA_CTRL_PORT      CONTROLLER listener on 127.0.0.1      (default KAFKA_PORT+1000)
#   KAFKA_SASL_SSL_PORT  opt-in: a SASL_SSL listener (SCRAM-SHA-512 over TLS) on 127.0.0.1 (default: none)
#   KAFKA_SASL_USERNAME  its SCRAM user                        (default osmosis)
#   KAFKA_STATE_DIR      data, pid, logs and certificates of this instance (default ~/.cache/osmosis/run/kafka-$KAFKA_PORT)
#   OSMOSIS_CACHE        dependency cache                       (default ~/.cache/osmosis)
#
# With KAFKA_SASL_SSL_PORT, `up` makes a CA and a broker certificate for
# 127.0.0.1 in $KAFKA_STATE_DIR/tls (PEM: ca.pem is what clients trust; once
# per state directory, and again before they expire) and a random password
# for the SCRAM user, added to the cluster's metadata when the storage is
# formatted. The controller and
# inter-broker listeners stay PLAINTEXT on loopback. `env` prints what a client
# needs: KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_CA_LOCATION, KAFKA_SASL_MECHANISM,
# KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD.
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
LOG4J_VERSION=${LOG4J_VERSION:-2.25.3}
SLF4J_VERSION=${SLF4J_VERSION:-2.0.17}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CTRL_PORT=${KAFKA_CTRL_PORT:-$((KAFKA_PORT + 1000))}
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-}
KAFKA_SASL_USERNAME=${KAFKA_SASL_USERNAME:-osmosis}
SASL_MECHANISM=SCRAM-SHA-512
OSMOSIS_CACHE=${OSMOSIS_CACHE:-$HOME/.cache/osmosis}
LIBS_DIR="$OSMOSIS_CACHE/kafka/$KAFKA_VERSION-log4j$LOG4J_VERSION/libs"
STATE_DIR=${KAFKA_STATE_DIR:-$OSMOSIS_CACHE/run/kafka-$KAFKA_PORT}
PID_FILE="$STATE_DIR/kafka.pid"
LOG_FILE="$STATE_DIR/logs/server.log"
TLS_DIR="$STATE_DIR/tls"
# The SCRAM user's password, made with the storage; its presence says the
# storage was formatted with that user.
PASSWORD_FILE="$TLS_DIR/sasl-password"
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}

log() { echo "kafka.sh: $*" >&2; }

. "$(dirname "$0")/lib.sh"

fetch() {
  if [ -f "$LIBS_DIR/.complete" ]; then
    return 0
  fi
  command -v mvn >/dev/null || { log "Maven (mvn) is required to fetch Kafka"; exit 1; }
  command -v java >/dev/null || { log "Java 17+ is required to run Kafka"; exit 1; }
  log "fetching Apache Kafka $KAFKA_VERSION and its runtime dependencies into $LIBS_DIR"
  local work
  work=$(mktemp -d)
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.osmosis</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- Transitive dependencies pin slf4j-api 1.7, which cannot see the slf4j2 backend: pin 2.x. -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$LIBS_DIR"
  mkdir -p "$LIBS_DIR"
  if ! (cd "$work" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS_DIR"); then
    rm -rf "$work"
    log "fetching Kafka $KAFKA_VERSION with Maven failed (see above)"
    exit 1
  fi
  rm -rf "$work"
  touch "$LIBS_DIR/.complete"
}

pid_alive() {
  [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A CA and a broker certificate (for 127.0.0.1 and localhost, signed by the
# CA) in PEM, made once per state directory and again when they expire
# within a day. The broker reads its key and chain from one PEM file
# (ssl.keystore.type=PEM: key unencrypted PKCS#8).
make_certificates() {
  if [ -f "$TLS_DIR/broker.pem" ] && [ -f "$TLS_DIR/ca.pem" ] &&
    openssl x509 -checkend 86400 -noout -in "$TLS_DIR/broker.pem" >/dev/null 2>&1; then
    return 0
  fi
  command -v openssl >/dev/null || { log "OpenSSL is required for the SASL_SSL listener"; exit 1; }
  log "making a CA and a broker certificate in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=osmosis test CA" \
      -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
      "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile broker.ext -out broker.crt
    cat broker.crt ca.pem broker.key >broker.pem
    rm -f broker.csr broker.ext ca.srl
  ) >"$STATE_DIR/logs/certificates.log" 2>&1 ||
    { log "making certificates failed:"; cat "$STATE_DIR/logs/certificates.log" >&2; exit 1; }
}

# The SASL_SSL listener's lines of server.properties: TLS from the PEM
# keystore, SCRAM-SHA-512 only, credentials checked against the cluster's
# metadata (no user or password in this file).
sasl_ssl_config() {
  cat <<PROPS
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker.pem
listener.name.sasl_ssl.sasl.enabled.mechanisms=$SASL_MECHANISM
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
}

write_config() {
  mkdir -p "$STATE_DIR/logs"
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTRL_PORT"
  local advertised="PLAINTEXT://127.0.0.1:$KAFKA_PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ -n "$KAFKA_SASL_SSL_PORT" ]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
    advertised="$advertised,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
    protocols="$protocols,SASL_SSL:SASL_SSL"
  fi
  cat >"$STATE_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CTRL_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$STATE_DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  if [ -n "$KAFKA_SASL_SSL_PORT" ]; then
    sasl_ssl_config >>"$STATE_DIR/server.properties"
  fi
  cat >"$STATE_DIR/log4j2.properties" <<LOG4J
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $LOG_FILE
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
LOG4J
}

java_cmd() {
  java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STATE_DIR/log4j2.properties" \
    -cp "$LIBS_DIR/*" "$@"
}

up() {
  fetch
  if pid_alive; then
    log "already running (pid $(cat "$PID_FILE")) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  local port
  for port in "$KAFKA_PORT" $KAFKA_SASL_SSL_PORT; do
    if port_open "$port"; then
      log "port $port is taken by another process; set KAFKA_PORT (or KAFKA_SASL_SSL_PORT)"
      exit 1
    fi
  done
  local formatted=false
  [ -f "$STATE_DIR/data/meta.properties" ] && formatted=true
  if $formatted && [ -n "$KAFKA_SASL_SSL_PORT" ] && [ ! -f "$PASSWORD_FILE" ]; then
    log "$STATE_DIR was formatted without SCRAM users, which can only be added at format time;"
    log "use a new KAFKA_STATE_DIR for a SASL_SSL listener (or remove this one)"
    exit 1
  fi
  write_config
  if [ -n "$KAFKA_SASL_SSL_PORT" ]; then
    make_certificates
  fi
  if ! $formatted; then
    format
  fi
  # A restart appends to the log: wait_ready must not take the previous
  # run's start line for this one's.
  if [ -f "$LOG_FILE" ]; then
    mv "$LOG_FILE" "$LOG_FILE.previous"
  fi
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT${KAFKA_SASL_SSL_PORT:+ (SASL_SSL on 127.0.0.1:$KAFKA_SASL_SSL_PORT)} (state in $STATE_DIR)"
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STATE_DIR/log4j2.properties" \
    -cp "$LIBS_DIR/*" kafka.Kafka "$STATE_DIR/server.properties" \
    >"$STATE_DIR/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  wait_ready
}

# Formats the storage; with a SASL_SSL listener, with its SCRAM user (a
# random password, kept beside the certificates).
format() {
  local scram=()
  if [ -n "$KAFKA_SASL_SSL_PORT" ]; then
    openssl rand -hex 24 >"$PASSWORD_FILE.new"
    chmod 600 "$PASSWORD_FILE.new"
    scram=(--add-scram "$SASL_MECHANISM=[name=$KAFKA_SASL_USERNAME,password=$(cat "$PASSWORD_FILE.new")]")
  fi
  java_cmd kafka.tools.StorageTool format -t "$(java_cmd kafka.tools.StorageTool random-uuid)" \
    -c "$STATE_DIR/server.properties" "${scram[@]}" >"$STATE_DIR/logs/format.log" 2>&1 ||
    { log "formatting storage failed:"; cat "$STATE_DIR/logs/format.log" >&2; exit 1; }
  if [ -n "$KAFKA_SASL_SSL_PORT" ]; then
    mv "$PASSWORD_FILE.new" "$PASSWORD_FILE"
  fi
}

wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    if ! pid_alive; then
      log "broker exited during start-up; its logs follow"
      logs >&2
      rm -f "$PID_FILE"
      exit 1
    fi
    # The broker logs this line once it serves metadata on its listeners.
    if port_open "$KAFKA_PORT" && { [ -z "$KAFKA_SASL_SSL_PORT" ] || port_open "$KAFKA_SASL_SSL_PORT"; } &&
      grep -q "Kafka Server started" "$LOG_FILE" 2>/dev/null; then
      log "ready on 127.0.0.1:$KAFKA_PORT${KAFKA_SASL_SSL_PORT:+ and SASL_SSL on 127.0.0.1:$KAFKA_SASL_SSL_PORT}"
      return 0
    fi
    sleep 0.2
  done
  log "broker not ready after ${START_TIMEOUT}s; its logs follow"
  logs >&2
  down
  exit 1
}

down() {
  if ! pid_alive; then
    rm -f "$PID_FILE"
    return 0
  fi
  local pid
  pid=$(cat "$PID_FILE")
  log "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "broker did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
}

# What a client of this instance needs, as NAME=value lines.
print_env() {
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
  if [ -n "$KAFKA_SASL_SSL_PORT" ]; then
    [ -f "$PASSWORD_FILE" ] || { log "no SASL_SSL listener in $STATE_DIR yet: run up first"; exit 1; }
    echo "KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$KAFKA_SASL_SSL_PORT"
    echo "KAFKA_CA_LOCATION=$TLS_DIR/ca.pem"
    echo "KAFKA_SASL_MECHANISM=$SASL_MECHANISM"
    echo "KAFKA_SASL_USERNAME=$KAFKA_SASL_USERNAME"
    echo "KAFKA_SASL_PASSWORD=$(cat "$PASSWORD_FILE")"
  fi
}

logs() {
  print_logs 200 "$STATE_DIR/logs/stdout.log" "$LOG_FILE"
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) pid_alive ;;
  env) print_env ;;
  logs) logs ;;
  *) echo "usage: $0 fetch|up|down|status|env|logs" >&2; exit 2 ;;
esac
