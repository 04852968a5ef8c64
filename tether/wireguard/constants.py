"""Protocol constants from the WireGuard paper (§5.4, §6), checked against wireguard-go.

Everything here is fixed by the protocol: changing any value breaks interoperability with the stock
clients (handshake strings, sizes) or changes behaviour they rely on (timers). Times are float
seconds because the sans-IO core measures time in the caller's monotonic seconds.
"""

from __future__ import annotations

# Handshake strings (paper §5.4). CONSTRUCTION also names the Noise protocol, so the same code can
# be checked against generic Noise test vectors; IDENTIFIER plays the role of the Noise prologue.
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# Message types: one byte followed by three reserved zero bytes, so on the wire the little-endian
# 32-bit word equals the type exactly when the reserved bytes are zero.
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

KEY_LEN = 32
HASH_LEN = 32
MAC_LEN = 16
TAG_LEN = 16
TIMESTAMP_LEN = 12
COOKIE_LEN = 16
XNONCE_LEN = 24

MESSAGE_INITIATION_SIZE = 148
MESSAGE_RESPONSE_SIZE = 92
MESSAGE_COOKIE_REPLY_SIZE = 64
MESSAGE_TRANSPORT_HEADER_SIZE = 16
MESSAGE_TRANSPORT_MIN_SIZE = MESSAGE_TRANSPORT_HEADER_SIZE + TAG_LEN  # a keepalive
MESSAGE_TRANSPORT_OFFSET_RECEIVER = 4
MESSAGE_TRANSPORT_OFFSET_COUNTER = 8
MESSAGE_TRANSPORT_OFFSET_CONTENT = 16
# Largest UDP payload; wireguard-go's MaxSegmentSize on Linux.
MESSAGE_MAX_SIZE = (1 << 16) - 1
# Plaintext of transport messages is zero-padded to a multiple of this (paper §5.4.6).
PADDING_MULTIPLE = 16

# Timers and limits (paper §6.1 table; wireguard-go device/constants.go).
REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
# Extra random delay added to REKEY_TIMEOUT retries so that peers do not retry in lockstep.
REKEY_TIMEOUT_JITTER_MAX = 0.334
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
# At most 50 initiations per second are consumed from one peer (flood protection).
HANDSHAKE_INITIATION_RATE = 1.0 / 50
# Once a device is under load it keeps demanding cookies for this long.
UNDER_LOAD_AFTER_TIME = 1.0
MAX_PEERS = 1 << 16
