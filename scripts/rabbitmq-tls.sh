#!/usr/bin/env bash
# Give the local RabbitMQ a TLS listener on 127.0.0.1:5671, as production Pulse has (amqps://).
#
#   scripts/rabbitmq-tls.sh            # idempotent: does nothing when the listener is already right
#
# It generates, once, a test CA and a server certificate for localhost and 127.0.0.1 (3650 days)
# in $PULSE_CELERY_TLS_DIR (default /etc/rabbitmq/pulse-celery-tls), writes a marked block of
# listener settings into rabbitmq.conf, and restarts the node the first time only. The tests
# verify the server's certificate and host name against that CA ($DIR/ca.pem), as users do.
# Run it as root (or as a user who may write the RabbitMQ configuration and run rabbitmqctl).
set -euo pipefail

DIR="${PULSE_CELERY_TLS_DIR:-/etc/rabbitmq/pulse-celery-tls}"
CONF="${RABBITMQ_CONFIG_FILE:-/etc/rabbitmq/rabbitmq.conf}"
CONF="${CONF%.conf}.conf"
BEGIN="# >>> pulse-celery TLS listener (scripts/rabbitmq-tls.sh)"
END="# <<< pulse-celery TLS listener"

say() { echo "rabbitmq-tls: $*"; }

make_certificates() {
  mkdir -p "$DIR"
  local work
  work="$(mktemp -d)"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=pulse-celery test CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/ext"
  openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 3650 -extfile "$work/ext" -out "$work/server.pem" 2>/dev/null
  cp "$work/ca.pem" "$work/ca.key" "$work/server.pem" "$work/server.key" "$DIR/"
  rm -rf "$work"
  say "made a test CA and a server certificate (localhost, 127.0.0.1) in $DIR"
}

certificates_ok() {
  [[ -s "$DIR/ca.pem" && -s "$DIR/server.pem" && -s "$DIR/server.key" ]] || return 1
  openssl verify -CAfile "$DIR/ca.pem" "$DIR/server.pem" >/dev/null 2>&1 || return 1
  openssl x509 -checkend 86400 -noout -in "$DIR/server.pem" >/dev/null 2>&1
}

block() {
  cat <<EOF
$BEGIN
listeners.ssl.local = 127.0.0.1:5671
ssl_options.cacertfile = $DIR/ca.pem
ssl_options.certfile = $DIR/server.pem
ssl_options.keyfile = $DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
$END
EOF
}

listening() {
  rabbitmqctl -q status 2>/dev/null | grep -q "port: 5671, protocol: amqp/ssl"
}

changed=0
if ! certificates_ok; then
  make_certificates
  changed=1
fi
if id rabbitmq >/dev/null 2>&1; then
  chown -R rabbitmq:rabbitmq "$DIR"
fi
chmod 755 "$DIR"
chmod 644 "$DIR/ca.pem" "$DIR/server.pem"
chmod 640 "$DIR/server.key" "$DIR/ca.key"

touch "$CONF"
# The block as it stands: the lines from BEGIN to END, compared as exact strings.
current="$(awk -v b="$BEGIN" -v e="$END" '$0 == b {on = 1} on {print} $0 == e {on = 0}' "$CONF")"
if [[ "$current" != "$(block)" ]]; then
  # Drop an earlier block of ours, then append this one.
  awk -v b="$BEGIN" -v e="$END" '$0 == b {on = 1} !on {print} $0 == e {on = 0}' "$CONF" >"$CONF.new"
  block >>"$CONF.new"
  cat "$CONF.new" >"$CONF" && rm "$CONF.new"
  say "wrote the TLS listener settings into $CONF"
  changed=1
fi

if [[ $changed == 0 ]] && listening; then
  say "TLS listener already on 127.0.0.1:5671 (CA: $DIR/ca.pem)"
  exit 0
fi

say "restarting RabbitMQ so that it reads $CONF"
if rabbitmqctl -q status >/dev/null 2>&1; then
  rabbitmqctl -q shutdown
fi
rabbitmq-server -detached
for _ in $(seq 1 60); do
  rabbitmqctl -q await_startup >/dev/null 2>&1 && break
  sleep 2
done
rabbitmqctl -q await_startup
if ! listening; then
  say "RabbitMQ started but has no TLS listener on 5671; see its log in /var/log/rabbitmq/" >&2
  exit 1
fi
say "TLS listener on 127.0.0.1:5671 (CA: $DIR/ca.pem)"
