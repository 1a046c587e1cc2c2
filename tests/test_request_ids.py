"""Request ids generated for requests that came without ``x-request-id``."""

from __future__ import annotations

import re

from predictor.serving import prometheus


def test_generated_request_ids_are_16_hex_digits_and_do_not_repeat():
    ids = [prometheus.new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)
    assert len({i[0] for i in ids}) == 16  # leading zeros kept: every first digit occurs
