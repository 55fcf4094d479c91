"""The refresh's DNS client: answers parsed, and every malformed answer refused with a reason."""

import struct

import pytest

from vpnfw.dnsquery import DNSError, parse_answer, query_packet


def answer(ident=7, flags=0x8180, records=(), question=b"\x03vpn\x00\x00\x01\x00\x01"):
    body = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", t, 1, 60, len(r)) + r for t, r in records)
    return struct.pack("!HHHHHH", ident, flags, 1, len(records), 0, 0) + question + body


def test_query_packet():
    assert query_packet("vpn.example.net", 1, 0x1234) == (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03vpn\x07example\x03net\x00\x00\x01\x00\x01")


def test_a_and_aaaa_records_are_read():
    v6 = bytes.fromhex("20010db8000000000000000000000007")
    data = answer(records=[(5, b"\x03cdn\xc0\x0c"), (1, bytes([198, 51, 100, 7])), (28, v6)])
    assert parse_answer(data, 7, 1) == ["198.51.100.7"]
    assert parse_answer(data, 7, 28) == ["2001:db8::7"]


def test_no_such_name_is_no_address():
    assert parse_answer(answer(flags=0x8183), 7, 1) == []


@pytest.mark.parametrize("data,ident,message", [
    (b"\x00\x07", 7, "short answer"),
    (answer(ident=8), 7, "answer to another query"),
    (answer(flags=0x8380), 7, "truncated"),
    (answer(flags=0x8182), 7, "error code 2"),
    (answer(question=b"\x03vp"), 7, "truncated answer"),
])
def test_malformed_answers_are_refused(data, ident, message):
    with pytest.raises(DNSError, match=message):
        parse_answer(data, ident, 1)
