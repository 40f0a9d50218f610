#!/usr/bin/env python3
"""The register events the memory targets at 10^7 are measured with
(DESIGN.md 13, step 30): N `register` lines of NDJSON for `devreg import`,
60% APNs-shaped tokens (64 hex digits) and 40% FCM-shaped ones (152
characters), 90% owned by N/2 people picked at random, last seen at a
random time in the year before 2026-01-01, three attributes from small
sets. The same seed gives the same file.

    scripts/gen-import.py 10000000 > /tmp/import-1e7.ndjson
    /usr/bin/time -v devreg import /tmp/import-1e7.ndjson   # with --db DIR
"""

import base64
import random
import sys

NOW_MS = 1_767_225_600_000
YEAR_MS = 365 * 86_400_000
VERSIONS = ["3.9.0", "4.0.1", "4.1.0", "4.2.0", "4.2.1"]
IOS_OS = ["16.7", "17.4", "17.5", "18.0", "18.1"]
ANDROID_OS = ["12", "13", "14", "15"]
PUSH = ["true", "true", "false"]


def fcm_token(r: random.Random) -> str:
    # 145 random base64url characters: 11, then `:APA91b`, then 134.
    chars = base64.urlsafe_b64encode(r.randbytes(111)).decode()
    return f"{chars[:11]}:APA91b{chars[11:145]}"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 20261205
    r = random.Random(seed)
    persons = max(n // 2, 1)
    out = sys.stdout
    lines = []
    for _ in range(n):
        android = r.random() < 0.4
        if android:
            token, platform, os_v = fcm_token(r), "android", r.choice(ANDROID_OS)
        else:
            token, platform, os_v = f"{r.getrandbits(256):064x}", "ios", r.choice(IOS_OS)
        person = f'"person-{r.randrange(persons):08d}"' if r.random() < 0.9 else "null"
        seen = NOW_MS - r.randrange(YEAR_MS)
        lines.append(
            f'{{"op":"register","token":"{token}","platform":"{platform}",'
            f'"person":{person},"seen_ms":{seen},"attributes":{{'
            f'"app_version":"{r.choice(VERSIONS)}","device_os":"{os_v}",'
            f'"push_enabled":"{r.choice(PUSH)}"}}}}\n'
        )
        if len(lines) >= 10_000:
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines))


if __name__ == "__main__":
    main()
