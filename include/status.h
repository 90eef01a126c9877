/*
 * `fleetprovd status`: what the state directory holds — the committed identity (thing name,
 * certificate id and expiry, provisioned-at) and any pending attempt (its step, attempt
 * number, age and last error) — as text or JSON on stdout. Reads only; never the network.
 */
#pragma once

#include <stdbool.h>
#include <stdio.h>

/* Print the status of state_dir to out; returns the process exit code (0, or 1 if unreadable). */
int status_run(const char *state_dir, bool json, FILE *out);
