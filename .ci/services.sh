#!/usr/bin/env bash
# Make sure every server the tests talk to is up on this machine; start the ones that are down.
# The start commands are those of the project machine (python-svc); each is tried only if its port is closed.
set -u

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure() {  # name port command...
  local name=$1 port=$2; shift 2
  if up "$port"; then echo "$name: up on $port"; return 0; fi
  echo "$name: down on $port, starting it"
  "$@" >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    if up "$port"; then echo "$name: started"; return 0; fi
    sleep 0.5
  done
  echo "$name: could not be started on port $port" >&2
  return 1
}

status=0
ensure mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf || status=1
ensure nats 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || status=1
ensure redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
  --dir /var/lib/redis --logfile /var/log/redis/ci.log || status=1
ensure postgresql 5432 bash -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || status=1
exit $status
