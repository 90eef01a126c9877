"""A small MQTT 3.1.1 client over TLS with client certificates, standard library only.

Enough to talk to the simulator the way a device does: CONNECT (with the CONNACK code
visible), SUBSCRIBE (with the granted codes visible), QoS 0/1 PUBLISH, and receiving
messages, one blocking call at a time.
"""

import json
import socket
import ssl
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, DISCONNECT = (
    1, 2, 3, 4, 8, 9, 12, 14)


class ConnectionClosed(Exception):
    """The broker closed the connection."""


class Refused(Exception):
    """CONNACK with a non-zero return code (5: not authorised)."""

    def __init__(self, code):
        super().__init__(f"CONNACK return code {code}")
        self.code = code


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _payload_bytes(payload):
    if isinstance(payload, (dict, list)):
        return json.dumps(payload).encode()
    if isinstance(payload, str):
        return payload.encode()
    return bytes(payload)


class Client:
    def __init__(self, port, ca, cert, key, client_id, host="localhost", keepalive=60,
                 timeout=5.0):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        raw = socket.create_connection((host, port), timeout=timeout)
        # Small request/answer packets: without this, Nagle adds tens of ms per exchange.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.client_id = client_id
        self.timeout = timeout
        self.buf = b""
        self.inbox = []  # PUBLISH messages received while waiting for something else
        self.next_mid = 1
        self._connect(keepalive)

    # -- packets -------------------------------------------------------------------------
    def _send(self, ptype, flags, body):
        self.sock.sendall(bytes([(ptype << 4) | flags]) + _varint(len(body)) + body)

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet from the broker in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no packet from the broker in time") from None
            except (ssl.SSLError, OSError) as e:
                raise ConnectionClosed(str(e)) from None
            if not chunk:
                raise ConnectionClosed("connection closed by the broker")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_packet(self, deadline):
        header = self._read_exact(1, deadline)[0]
        length, shift = 0, 0
        while True:
            b = self._read_exact(1, deadline)[0]
            length += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return header >> 4, header & 0x0F, self._read_exact(length, deadline)

    def _on_publish(self, flags, body):
        tlen = struct.unpack("!H", body[:2])[0]
        topic = body[2:2 + tlen].decode()
        pos = 2 + tlen
        qos = (flags >> 1) & 3
        if qos:
            mid = body[pos:pos + 2]
            pos += 2
            self._send(PUBACK, 0, mid)
        self.inbox.append((topic, body[pos:]))

    def _wait_for(self, want, timeout=None):
        """Read until a packet of type want arrives (PUBLISH packets are queued)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            ptype, flags, body = self._read_packet(deadline)
            if ptype == PUBLISH:
                self._on_publish(flags, body)
                if want == PUBLISH:
                    return None
            elif ptype == want:
                return body

    def _mid(self):
        mid = self.next_mid
        self.next_mid = mid % 65535 + 1
        return mid

    # -- API -----------------------------------------------------------------------------
    def _connect(self, keepalive):
        body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive)
        self._send(CONNECT, 0, body + _string(self.client_id))
        ack = self._wait_for(CONNACK)
        if ack[1] != 0:
            self.close()
            raise Refused(ack[1])

    def subscribe(self, *topics, qos=1):
        """Subscribe; returns the granted codes (0x80 = refused)."""
        mid = self._mid()
        body = struct.pack("!H", mid) + b"".join(_string(t) + bytes([qos]) for t in topics)
        self._send(SUBSCRIBE, 2, body)
        return list(self._wait_for(SUBACK)[2:])

    def publish(self, topic, payload=b"", qos=1):
        """Publish; with QoS 1 returns once the PUBACK has arrived."""
        data = _payload_bytes(payload)
        if qos == 0:
            self._send(PUBLISH, 0, _string(topic) + data)
            return
        mid = self._mid()
        self._send(PUBLISH, 2, _string(topic) + struct.pack("!H", mid) + data)
        self._wait_for(PUBACK)

    def receive(self, timeout=None):
        """The next message as (topic, payload bytes), or None after timeout seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.inbox:
            try:
                self._wait_for(PUBLISH, max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                return None
        return self.inbox.pop(0)

    def receive_all(self, duration):
        """Every message that arrives within duration seconds."""
        out = []
        deadline = time.monotonic() + duration
        while True:
            msg = self.receive(timeout=max(deadline - time.monotonic(), 0.001))
            if msg is None:
                return out
            out.append(msg)

    def request(self, topic, payload=b"", timeout=None, subscribe=True):
        """Publish a Fleet Provisioning request; returns (suffix, decoded JSON).

        suffix is "accepted" or "rejected". Subscribes to both response topics first, as
        AWS asks, unless subscribe is False.
        """
        if subscribe:
            granted = self.subscribe(topic + "/accepted", topic + "/rejected")
            assert granted == [1, 1], f"subscription refused: {granted}"
        self.publish(topic, payload)
        msg = self.receive(timeout)
        if msg is None:
            raise TimeoutError(f"no answer to {topic}")
        rtopic, data = msg
        assert rtopic.startswith(topic + "/"), rtopic
        return rtopic[len(topic) + 1:], json.loads(data)

    def ping(self):
        self._send(PINGREQ, 0, b"")
        self._wait_for(13)

    def close(self):
        try:
            self._send(DISCONNECT, 0, b"")
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
