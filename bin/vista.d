#!/usr/bin/env bash
# vista.d: init-script shim for Vista, with LSB exit codes.
#
#   vista.d start|stop|restart|status|reload|run|check-config [options, e.g. --settings PATH]
#
# start 0 (also when already running), 1 failed, 6 invalid settings or VISTA_ENABLED=False;
# stop 0; status 0 running, 1 dead but the pidfile exists, 3 not running; reload 7 not running;
# anything else: usage, 2. The settings come from --settings, $VISTA_SETTINGS, or
# /etc/skyline/vista/settings.py. The vista command is $VISTA_BIN, else the project's .venv,
# else the one on PATH.
set -u
here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
vista="${VISTA_BIN:-}"
if [ -z "$vista" ]; then
    if [ -x "$here/../.venv/bin/vista" ]; then vista="$here/../.venv/bin/vista"; else vista="$(command -v vista || true)"; fi
fi
if [ -z "$vista" ]; then
    echo "vista.d: the vista command is not installed (run 'make install')" >&2
    exit 5
fi
case "${1:-}" in
    start|stop|restart|status|reload|run|check-config)
        action="$1"; shift
        exec "$vista" "$action" "$@" ;;
    *)
        echo "usage: $(basename "$0") {start|stop|restart|status|reload|run|check-config} [--settings PATH]" >&2
        exit 2 ;;
esac
