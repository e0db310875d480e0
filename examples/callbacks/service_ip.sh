#!/bin/sh
# Patroni callback: keep a floating service IP on whichever node is the primary.
#
#   postgresql:
#     callbacks:
#       on_start: /path/to/service_ip.sh
#       on_stop: /path/to/service_ip.sh
#       on_role_change: /path/to/service_ip.sh
#
# Called as: service_ip.sh <action> <role> <scope>
# Settings (environment of the patroni daemon):
#   SERVICE_IP     address with prefix, e.g. 10.0.0.100/24 (required)
#   SERVICE_DEV    interface, e.g. eth0 (required)
# The daemon usually runs as the postgres user: grant it `ip` through sudo, e.g.
#   postgres ALL=(root) NOPASSWD: /usr/sbin/ip addr add *, /usr/sbin/ip addr del *, /usr/sbin/arping *
# and set SUDO=sudo. The script is idempotent: adding an address that is present or
# removing one that is absent is not an error.
set -eu
action="${1:?action}"
role="${2:?role}"
ip="${SERVICE_IP:?set SERVICE_IP, e.g. 10.0.0.100/24}"
dev="${SERVICE_DEV:?set SERVICE_DEV, e.g. eth0}"
sudo="${SUDO:-}"

has_ip() { ip -o addr show dev "$dev" | grep -q " ${ip%/*}/"; }

add_ip() {
    has_ip && return 0
    $sudo ip addr add "$ip" dev "$dev"
    # Tell the neighbours the address moved (ignore if arping is not installed).
    command -v arping >/dev/null 2>&1 && $sudo arping -q -U -c 3 -I "$dev" "${ip%/*}" || true
}

del_ip() {
    has_ip || return 0
    $sudo ip addr del "$ip" dev "$dev"
}

case "$action" in
    on_stop) del_ip ;;
    on_start|on_role_change|on_restart)
        if [ "$role" = primary ]; then add_ip; else del_ip; fi ;;
    *) ;;
esac
