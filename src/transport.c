/* Names for transport failures, shared by every transport implementation and its users. */
#include "transport.h"
#include "macro.h"

static const char *const failure_names[_TRANSPORT_FAIL_MAX] = {
    [TRANSPORT_OK] = "no failure",
    [TRANSPORT_FAIL_DNS] = "DNS lookup failed",
    [TRANSPORT_FAIL_TCP] = "TCP connection failed",
    [TRANSPORT_FAIL_TLS] = "TLS handshake failed",
    [TRANSPORT_FAIL_TLS_UNTRUSTED] = "server certificate not trusted",
    [TRANSPORT_FAIL_CREDENTIALS] = "client certificate or key unusable",
    [TRANSPORT_FAIL_NOT_AUTHORIZED] = "not authorized",
    [TRANSPORT_FAIL_REFUSED] = "connection refused",
    [TRANSPORT_FAIL_LOST] = "connection lost",
    [TRANSPORT_FAIL_PROTOCOL] = "MQTT protocol error",
};

const char *transport_failure_to_string(enum transport_failure f)
{
	if ((unsigned)f >= ARRAY_SIZE(failure_names))
		return "unknown failure";
	return failure_names[f];
}
