#!/bin/sh
# Patroni callback: append one line per event to a log file.
#
#   postgresql:
#     callbacks:
#       on_start: /path/to/log_event.sh
#       on_stop: /path/to/log_event.sh
#       on_restart: /path/to/log_event.sh
#       on_reload: /path/to/log_event.sh
#       on_role_change: /path/to/log_event.sh
#
# Called as: log_event.sh <action> <role> <scope>
# The file defaults to /tmp/patroni-callbacks.log; set PATRONI_CALLBACK_LOG to change it.
set -eu
action="${1:?action}"
role="${2:?role}"
scope="${3:?scope}"
log="${PATRONI_CALLBACK_LOG:-/tmp/patroni-callbacks.log}"
printf '%s %s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$action" "$role" "$scope" >> "$log"
