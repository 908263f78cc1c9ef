#!/bin/sh
# keepalived health check: this gateway keeps the floating address only
# while Sluice answers /readyz (ready, not draining) on its admin listener.
exec curl -fsS --max-time 1 -o /dev/null "http://${SLUICE_ADMIN:-127.0.0.1:9901}/readyz"
