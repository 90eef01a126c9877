/*
 * `fleetprovd check`: preflight diagnostics an admin runs before shipping an image or when a
 * gateway will not provision. Each check prints one line, ok / warn / fail, with the fix;
 * --json prints an array instead. Checks: configuration, claim certificate and key (parse,
 * match, expiry, file modes), CA bundle, clock, state directory, template parameters and
 * client id, DNS, TCP, TLS (configured port, and 443 with ALPN), MQTT CONNECT with the claim.
 */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "config.h"

/* Run every check; returns the process exit code: 0 when nothing failed, 1 otherwise. */
int check_run(const struct config *cfg, bool json, FILE *out);
