/*
 * journald MESSAGE_IDs of fleetprovd's milestones. They are stable: admins filter on them
 * (journalctl MESSAGE_ID=...) and systemd/fleetprovd.catalog explains each for journalctl -x.
 */
#pragma once

#define MESSAGE_ID_PROVISIONED         "bb0236d4b58441ad86388e68af923f8a"
#define MESSAGE_ID_ALREADY_PROVISIONED "d14fe98315df45a496e3192358dd45f9"
#define MESSAGE_ID_REJECTED            "9b5f10f43fd84fe99e190d5db4afa3ab"
#define MESSAGE_ID_RETRYING            "cdaa7ec6f53d42b99180c554913d219b"
#define MESSAGE_ID_CONFIG_ERROR        "949f3f707a674b709db054e5fab98eb9"
#define MESSAGE_ID_CLOCK_WAIT          "cb0ada6089b746729b8b2315dc312a6b"
